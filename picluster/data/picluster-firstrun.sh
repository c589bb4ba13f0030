#!/bin/sh
# picluster's first-boot hook for images without cloud-init (written by `picluster
# prepare-boot`).  cmdline.txt runs it once, early and offline, through systemd.run=, as
# Raspberry Pi Imager runs its firstrun.sh.  It installs a unit that runs
# picluster-firstboot.sh once the network is online, takes itself out of cmdline.txt, and
# the Pi reboots (systemd.run_success_action=reboot).
set -eu
boot_dir=$(dirname "$(readlink -f "$0")")
# Raspberry Pi Imager's customisation (user, Wi-Fi, ssh), whose place in cmdline.txt this took.
if [ -f "$boot_dir/firstrun.sh" ]; then
    sh "$boot_dir/firstrun.sh" || echo "picluster: $boot_dir/firstrun.sh failed" >&2
    rm -f "$boot_dir/firstrun.sh"
fi
units=/etc/systemd/system
cat > "$units/picluster-firstboot.service" <<UNIT
[Unit]
Description=picluster first boot: install picluster and join the cluster
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sh $boot_dir/picluster-firstboot.sh
# From now on picluster.service runs the node.
ExecStartPost=/bin/systemctl disable picluster-firstboot.service

[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$units/multi-user.target.wants"
ln -sf "$units/picluster-firstboot.service" "$units/multi-user.target.wants/"
sed -i 's| systemd\.run=[^ ]*/picluster-firstrun\.sh systemd\.run_success_action=reboot systemd\.unit=kernel-command-line\.target||' \
    "$boot_dir/cmdline.txt"
