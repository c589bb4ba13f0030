"""Provisioning: from SD card to running node.

`prepare-boot` runs on the operator's machine and writes a boot partition; `boot` runs on
the node at first boot and at every start of picluster.service.
"""

from picluster.provision.boot import BootError, prepare_boot

__all__ = ["BootError", "prepare_boot"]
