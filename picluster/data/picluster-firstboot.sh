#!/bin/sh
# Install picluster and boot this Pi into the cluster (written by `picluster prepare-boot`).
# cloud-init's runcmd runs it on images with cloud-init; on images without, the unit that
# picluster-firstrun.sh installs does.  Every step is idempotent: running it again is safe.
set -eu
boot_dir=$(dirname "$(readlink -f "$0")")
venv=/opt/picluster
# One run at a time: when both hooks fire, the second finds the work done.
exec 9>/run/picluster-firstboot.lock
flock 9
if [ ! -x "$venv/bin/picluster" ]; then
    # git for the cluster repository; a venv, as Debian's Python is externally managed.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
        git python3-venv openssh-client
    python3 -m venv "$venv"
    "$venv/bin/pip" install @PACKAGE@
fi
ln -sf "$venv/bin/picluster" /usr/local/bin/picluster
# With systemd, boot installs and starts picluster.service, then returns.
exec "$venv/bin/picluster" --config "$boot_dir/picluster.conf" boot
