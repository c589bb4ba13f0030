"""The lab: a virtual Raspberry Pi cluster of real hosts in network namespaces.

Owns the lab's namespaces and bridge, the processes it starts for each host, and
`picluster lab`.  It drives picluster only as a Pi would: through boot configs and the
command line.
"""

from picluster.lab.lab import Lab, LabError, preflight

__all__ = ["Lab", "LabError", "preflight"]
