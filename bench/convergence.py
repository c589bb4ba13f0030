"""Convergence: seconds from a node's registration until every playbook of its role is
applied by its own `playbook` tasks (the last one's outcome finished), the tasks and
commits that took; then, after `lab kill` of one worker, seconds until every surviving
node's cluster hostfile no longer lists it.

    sudo python bench/convergence.py [--nodes 4] [--machines]

One --fast lab, removed afterwards: netns nodes (the playbooks run in check mode) or, with
--machines, machine nodes (they install OpenMPI and Ganglia for real from the lab's
repository; `lab up` itself waits until they are configured).  Prints JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from datetime import datetime

from common import emit

from picluster import layout
from picluster.gitstore import ClusterRepo, Snapshot
from picluster.lab import Lab
from picluster.lab.hosts import MachineNode
from picluster.settings import Settings
from picluster.tasks import Outcome, Task


def stamp(date: str) -> float:
    return datetime.fromisoformat(date).timestamp()


def applied(snapshot: Snapshot, mac: str) -> float:
    """When the last of the node's playbooks first applied: the latest of each playbook's
    first `ok` outcome."""
    folder = f"{layout.queue_dir(mac)}/done"
    first: dict[str, float] = {}
    for name in snapshot.listdir(folder, files=True):
        outcome = Outcome.from_json(snapshot.read(f"{folder}/{name}") or "")
        if outcome.task == "playbook" and outcome.status == "ok" and outcome.finished_at:
            playbook = str(outcome.result["playbook"])
            at = stamp(outcome.finished_at)
            first[playbook] = min(first.get(playbook, at), at)
    return max(first.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--machines", action="store_true", help="machine nodes (systemd)")
    args = parser.parse_args()
    lab = Lab(tempfile.mkdtemp(prefix="pcl-cv-", dir="/tmp"))
    try:
        lab.up(args.nodes, fast=True, machines=args.machines)
        repo = ClusterRepo.from_settings(Settings.load(lab.operator_config), "bench")
        lab.configured(timeout=args.timeout)
        snapshot = repo.sync()
        # A node registered when its ip/<mac> first landed, and was configured when the
        # last of its role's playbooks first applied (its outcome's finish, its own clock:
        # the lab's nodes share this machine's).
        registered = {node.mac: stamp(repo.log(layout.ip_path(node.mac), limit=1000)[-1]
                                      ["date"]) for node in lab.nodes}
        configured = {node.mac: applied(snapshot, node.mac) for node in lab.nodes}
        took = {node.name: round(configured[node.mac] - registered[node.mac], 1)
                for node in lab.nodes}
        first, last = min(registered.values()), max(configured.values())
        commits = [c for c in repo.log(limit=100_000) if first - 1 <= stamp(c["date"]) <= last]
        snapshot = repo.sync()
        tasks: Counter[str] = Counter()
        producers: Counter[str] = Counter()
        for node in lab.nodes:
            folder = layout.queue_dir(node.mac)
            for sub in (folder, f"{folder}/done", f"{folder}/rejected"):
                for name in snapshot.listdir(sub, files=True):
                    text = snapshot.read(f"{sub}/{name}") or ""
                    if sub == folder:
                        task = Task.from_json(text, name)
                        tasks[task.task] += 1
                        producers[task.producer] += 1
                    else:
                        outcome = Outcome.from_json(text)
                        tasks[outcome.task or "?"] += 1
                        producers[outcome.producer or "?"] += 1

        # Membership change: one worker dies; every survivor's hostfile drops it.
        master = next(s for s in lab.status() if s.role == "master")
        victim = next(n for n in lab.nodes if n.name != master.name)
        survivors = [n for n in lab.nodes if n.name != victim.name]
        killed = time.monotonic()
        lab.kill(victim.name)
        updated: dict[str, float] = {}
        while len(updated) < len(survivors):
            if time.monotonic() - killed > 300:
                raise TimeoutError(f"hostfiles still list {victim.name}: "
                                   f"{sorted(set(n.name for n in survivors) - set(updated))}")
            for node in survivors:
                path = node.settings().cluster_hostfile
                if isinstance(node, MachineNode):
                    path = node.on_host(path)
                if node.name not in updated and f"{victim.ip} " not in path.read_text():
                    updated[node.name] = round(time.monotonic() - killed, 1)
            time.sleep(0.2)
        settings = lab.nodes[0].settings()
        emit({"benchmark": "convergence", "nodes": args.nodes,
              "lab": ("machines" if args.machines else "netns") + ", --fast",
              "poll_interval_s": settings.poll_interval, "master_grace_s": settings.master_grace,
              "registration_to_configured_s": took,
              "max_registration_to_configured_s": max(took.values()),
              "median_registration_to_configured_s": round(statistics.median(took.values()), 1),
              "tasks": sum(tasks.values()), "tasks_by_name": dict(tasks),
              "task_producers": dict(producers),
              "commits_during_convergence": len(commits),
              "enqueue_commits": sum(c["subject"].startswith("enqueue") for c in commits),
              "kill_to_hostfiles_updated_s": max(updated.values()),
              "hostfile_updated_per_node_s": updated,
              "prune_bound_s": settings.ping_interval * settings.prune_after
              + settings.poll_interval})
    finally:
        lab.down()


if __name__ == "__main__":
    main()
