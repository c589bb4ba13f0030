"""Ganglia, in one place: its config, the text of gmond.conf and gmetad.conf, the digest
nodes report, and the daemons the agent supervises.

Builds on the registry and the queue; nothing below it knows Ganglia exists.
"""

from picluster.ganglia.config import GangliaConfig, gmetad_conf, gmond_conf
from picluster.ganglia.daemons import Daemons, apply, digest

__all__ = ["Daemons", "GangliaConfig", "apply", "digest", "gmetad_conf", "gmond_conf"]
