"""Failure detection: seconds from `lab kill` of a worker until the master's MPI hostfile
no longer lists it, over several kills, against the bound the master promises:
ping_interval x prune_after + poll_interval.

    sudo python bench/failure_detection.py [--kills 5] [--nodes 4]

One --fast lab (ping_interval 2 s, prune_after 2, poll_interval 1 s), removed afterwards.
Prints JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

from common import emit, now

from picluster.lab import Lab


def in_hostfile(lab: Lab, name: str) -> bool:
    return next(s for s in lab.status() if s.name == name).in_hostfile


def wait(condition: Callable[[], bool], timeout: float) -> float:
    started = now()
    while not condition():
        if now() - started > timeout:
            raise TimeoutError(f"still waiting after {timeout} s")
        time.sleep(0.05)
    return now() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=4)
    args = parser.parse_args()
    lab = Lab(tempfile.mkdtemp(prefix="pcl-fd-", dir="/tmp"))
    try:
        lab.up(args.nodes, fast=True)
        settings = lab.nodes[0].settings()
        bound = settings.ping_interval * settings.prune_after + settings.poll_interval
        wait(lambda: all(s.in_hostfile for s in lab.status()), 120)
        removals = []
        for kill in range(args.kills):
            master = next(s for s in lab.status() if s.role == "master")
            victim = [n for n in lab.nodes if n.name != master.name][kill % (args.nodes - 1)]
            time.sleep(1.0 + kill * 0.37 % 2)  # vary the phase against the ping schedule
            lab.kill(victim.name)
            removals.append(round(wait(lambda v=victim: not in_hostfile(lab, v.name), 60), 2))
            lab.revive(victim.name)
            wait(lambda v=victim: in_hostfile(lab, v.name), 120)
            time.sleep(settings.ping_interval * 2)  # let it settle before the next kill
        ratios = [round(r / bound, 2) for r in removals]
        emit({"benchmark": "failure_detection", "nodes": args.nodes,
              "ping_interval_s": settings.ping_interval, "prune_after": settings.prune_after,
              "poll_interval_s": settings.poll_interval, "bound_s": bound,
              "removal_s": removals, "ratio_to_bound": ratios,
              "median_ratio": statistics.median(ratios),
              "all_within_bound": all(r <= bound for r in removals),
              "target": "every removal within the bound; median <= 0.8"})
    finally:
        lab.down()


if __name__ == "__main__":
    main()
