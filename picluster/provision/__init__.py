"""Provisioning: from SD card to running node, as two programs for two machines.

`picluster.provision.card` is the operator's SD-card tool (`prepare-boot`): it writes a
boot partition and never loads the node layer.  `picluster.provision.firstboot` runs on
the node (`boot`), at first boot and at every start of picluster.service, and becomes the
agent; it loads the agent (huey, APScheduler) only then.  Neither edits the cluster
repository's files itself: a node joins through picluster.registry.
"""

from picluster.provision.card import (
    CONFIG_NAME,
    DEFAULT_MOUNT,
    KEY_NAME,
    Prepared,
    boot_config,
    prepare_boot,
)
from picluster.provision.common import BootError
from picluster.provision.firstboot import boot

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_MOUNT",
    "KEY_NAME",
    "BootError",
    "Prepared",
    "boot",
    "boot_config",
    "prepare_boot",
]
