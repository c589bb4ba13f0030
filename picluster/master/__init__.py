"""The master side: the jobs only the node holding `master` runs.

Owns the views that follow membership (inventory, hostfile, known_hosts, and when the
master sends Ganglia's config), the health checks (a knock on every worker's ssh port,
Ansible's ping, the prune) and the state those jobs share.  Membership here is the
registrations the cluster key signed (`members`): nothing else reaches a view or a
ping.  It never schedules itself: the node agent runs these jobs while it is master.
"""

from picluster.master.health import PingReport
from picluster.master.jobs import Master

__all__ = ["Master", "PingReport"]
