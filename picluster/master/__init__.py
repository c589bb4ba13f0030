"""The master side: the jobs only the node holding `master` runs.

Owns the views that follow membership (inventory, hostfile, known_hosts), the health
checks (a knock on every worker's ssh port, the ping, the prune), the health record
in the repository (`record`), the convergence of every node to its desired state (its
role's playbooks, the cluster files, a worker's Ganglia config, sent as tasks), the state
those jobs share, and taking `master` over from a silent master (`takeover`, the jobs the
other nodes run).  Membership here is the registrations the cluster key signed
(`members`): nothing else reaches a view or a ping.  It never schedules itself: the node
agent runs these jobs while it is master (`takeover`'s while it is not).
"""

from picluster.master.health import PingReport
from picluster.master.jobs import Master
from picluster.master.takeover import Succession

__all__ = ["Master", "PingReport", "Succession"]
