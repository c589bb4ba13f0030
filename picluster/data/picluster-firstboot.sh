#!/bin/sh
# Install picluster and boot this Pi into the cluster (written by `picluster prepare-boot`).
# cloud-init's runcmd runs it on images with cloud-init; on images without, the unit that
# picluster-firstrun.sh installs does.  Every step is idempotent: running it again is safe.
#
# It installs exactly the picluster prepare-boot put on this card: the wheel in
# picluster-wheels/, after checking it (and every other wheel there) against SHA256SUMS.
# A card that fails the check stops here with one line in the journal, installing nothing.
set -eu
boot_dir=$(dirname "$(readlink -f "$0")")
wheels="$boot_dir/picluster-wheels"
# Where picluster goes, and the lock of this script (tests point both elsewhere).
venv=${PICLUSTER_VENV:-/opt/picluster}
lock=${PICLUSTER_FIRSTBOOT_LOCK:-/run/picluster-firstboot.lock}
# What prepare-boot chose: the wheel on the card, with its dependencies from the card too
# (offline=yes) or from the package index; or, only with --package, a requirement pip
# resolves on the index (then wheel is empty).
wheel=@WHEEL@
offline=@OFFLINE@
package=@PACKAGE@

fail() {
    # One line in the journal (on stderr where there is no journal), then stop.
    logger -p user.err -t picluster-firstboot -- "$*" 2>/dev/null \
        || echo "picluster-firstboot: $*" >&2
    exit 1
}

verify() {
    [ -f "$wheels/SHA256SUMS" ] \
        || fail "no $wheels/SHA256SUMS: this card holds no picluster prepare-boot wrote; nothing was installed"
    grep -q "  $wheel\$" "$wheels/SHA256SUMS" \
        || fail "$wheel is not in $wheels/SHA256SUMS; nothing was installed"
    for file in "$wheels"/*.whl; do
        [ -e "$file" ] || continue
        grep -q "  ${file##*/}\$" "$wheels/SHA256SUMS" \
            || fail "$file is not in $wheels/SHA256SUMS (added after prepare-boot?); nothing was installed"
    done
    while read -r sum name; do
        actual=$(sha256sum < "$wheels/$name" 2>/dev/null) || actual=missing
        [ "${actual%% *}" = "$sum" ] \
            || fail "$wheels/$name does not match its sha256 in SHA256SUMS (changed or damaged after prepare-boot); nothing was installed"
    done < "$wheels/SHA256SUMS"
}

# One run at a time: when both hooks fire, the second finds the work done.
exec 9>"$lock"
flock 9
if [ ! -x "$venv/bin/picluster" ]; then
    if [ -n "$wheel" ]; then
        verify
    fi
    echo "picluster-firstboot: installing ${wheel:-$package} into $venv"
    # git for the cluster repository; a venv, as Debian's Python is externally managed.
    # Only what the image lacks: a Pi without the internet may have all of it.
    missing=
    command -v git >/dev/null 2>&1 || missing="$missing git"
    command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
    python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"
    if [ -n "$missing" ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get -q -o DPkg::Lock::Timeout=600 update \
            || echo "picluster-firstboot: apt-get update failed; installing$missing from what apt knows" >&2
        apt-get -q -o DPkg::Lock::Timeout=600 install -y $missing \
            || fail "cannot install$missing with apt-get (is a Debian mirror reachable?); picluster is not installed"
    fi
    python3 -m venv "$venv"
    if [ -z "$wheel" ]; then
        "$venv/bin/pip" install "$package"
    else
        # pip checks the hash again, and records it with the install (direct_url.json).
        sum=$(grep "  $wheel\$" "$wheels/SHA256SUMS" | cut -d' ' -f1)
        if [ "$offline" = yes ]; then
            "$venv/bin/pip" install --no-index --find-links "$wheels" "file://$wheels/$wheel#sha256=$sum"
        else
            "$venv/bin/pip" install "file://$wheels/$wheel#sha256=$sum"
        fi
    fi || { rm -rf "$venv"; fail "pip could not install picluster (see above); nothing was installed into $venv"; }
fi
ln -sf "$venv/bin/picluster" /usr/local/bin/picluster
# With systemd, boot installs and starts picluster.service, then returns.
exec "$venv/bin/picluster" --config "$boot_dir/picluster.conf" boot
