"""The node side: the agent every node runs (`picluster agent`, picluster.service).

Owns the agent's lifecycle and its APScheduler jobs, the intake of this node's tasks from
git into the local huey queue, and the outbox that pushes their outcomes.  The master's
jobs live in `picluster.master`; the agent only schedules them while it holds `master`.
"""

from picluster.node.agent import Agent

__all__ = ["Agent"]
