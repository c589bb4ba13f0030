"""The lab: a virtual Raspberry Pi cluster of real hosts in network namespaces.

Owns the lab's namespaces and bridge, the processes it starts for each host, the files in
its directory, the machine nodes' image cache, and `picluster lab`.  It drives picluster
only as a Pi would: through boot cards, boot configs and the command line.  It never
touches the root network namespace (all its traffic stays in its namespaces, on
198.18.0.0/15), makes nothing outside its directory but its namespaces, sshd's /run/sshd
and the image cache (/var/cache/picluster-lab), and never signals a process that does not
carry its marker (or is not the systemd of one of its machine nodes).

    net       names and addresses from the lab directory; namespaces, the switch, cables
    procs     each host's holder and what runs in it; liveness; stopping everything
    hosts     Host, Node and MachineNode: their files, and the configs the lab writes
    image     the machine nodes' Debian image, local package mirror and wheelhouse (cached)
    machines  a machine node's card, disk and container, and what keeps it from joining
    status    the state file and what the lab reports
    machine   what the lab needs of this machine (root, packages)
    errors    LabError, and running a short command
    lab       the Lab: up, add_node, converge, status, exec, kill/revive, mpirun, down
    cli       `picluster lab`

A node is a namespace node (the default: it shares this machine's file system and runs
picluster from this checkout) or a machine node (--machines: systemd-nspawn boots it from
a disk and a boot card of its own; its systemd takes the place of the holder).
"""

from picluster.lab.errors import LabError
from picluster.lab.hosts import MachineNode, Node
from picluster.lab.lab import Lab
from picluster.lab.machine import preflight
from picluster.lab.status import NodeStatus

__all__ = ["Lab", "LabError", "MachineNode", "Node", "NodeStatus", "preflight"]
