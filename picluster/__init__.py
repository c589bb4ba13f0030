"""picluster: a self-configuring Raspberry Pi Beowulf cluster, with git as its broker."""

__version__ = "0.1.0"
