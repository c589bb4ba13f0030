"""Provisioning: from SD card to running node, as two programs for two machines.

`picluster.provision.card` is the operator's SD-card tool (`prepare-boot`): it writes a
boot partition and never loads the node layer.  `picluster.provision.firstboot` runs on
the node (`boot`), at first boot and at every start of picluster.service, and becomes the
agent; `boot` loads on first use, so importing this package for the card tool loads
nothing of the node layer.  Neither edits the cluster
repository's files itself: a node joins through picluster.registry.
"""

from typing import Any

from picluster.provision.card import (
    ANCHOR_NAME,
    CONFIG_NAME,
    DEFAULT_MOUNT,
    KEY_NAME,
    Prepared,
    anchor_text,
    boot_config,
    prepare_boot,
)
from picluster.provision.common import BootError

__all__ = [
    "ANCHOR_NAME",
    "CONFIG_NAME",
    "DEFAULT_MOUNT",
    "KEY_NAME",
    "BootError",
    "Prepared",
    "anchor_text",
    "boot",
    "boot_config",
    "prepare_boot",
]


def __getattr__(name: str) -> Any:
    if name == "boot":
        from picluster.provision.firstboot import boot

        return boot
    raise AttributeError(f"module 'picluster.provision' has no attribute {name!r}")
