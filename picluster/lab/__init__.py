"""The lab: a virtual Raspberry Pi cluster of real hosts in network namespaces.

Owns the lab's namespaces and bridge, the processes it starts for each host, the files in
its directory, and `picluster lab`.  It drives picluster only as a Pi would: through boot
configs and the command line.  It never touches the root network namespace (all its
traffic stays in its namespaces, on 198.18.0.0/15), makes nothing outside its directory
but its namespaces and sshd's /run/sshd, and never signals a process that does not carry
its marker.

    net      names and addresses from the lab directory; namespaces, the switch, cables
    procs    each host's holder and what runs in it; liveness; stopping everything
    hosts    Host and Node: their files, and the sshd and boot configs the lab writes
    status   the state file and what the lab reports
    machine  what the lab needs of this machine (root, packages)
    errors   LabError, and running a short command
    lab      the Lab: up, add_node, converge, status, exec, kill/revive, mpirun, down
    cli      `picluster lab`

A new kind of node (a machine node: a systemd-nspawn container booting a system of its
own) is a Host in hosts, plugged in by net as any host; its container takes the place of
the holder in procs.
"""

from picluster.lab.errors import LabError
from picluster.lab.hosts import Node
from picluster.lab.lab import Lab
from picluster.lab.machine import preflight
from picluster.lab.status import NodeStatus

__all__ = ["Lab", "LabError", "Node", "NodeStatus", "preflight"]
