"""Lab up: seconds from `picluster lab up --nodes N --fast` until the cluster converged
(every node's ip/<mac> on main, one master), and what the lab costs in memory.

    sudo python bench/lab_up.py [--nodes 4 8 16] [--settle 5] [--slow] [--converge-batch N]
                                [--configured]

--slow keeps a real cluster's timings (poll 30 s, ping 60 s, the master's 300 s grace)
in place of --fast's (1 s, 2 s, 3 s): on a small machine, 64 nodes polling every second
need more CPU than it has.  --converge-batch sets every node's converge_batch (how many
nodes run their playbooks at once; 0: all).

--configured also waits until every node applied its role's playbooks (`picluster
status`: configured) and reports when.

Each N gets a lab of its own in a fresh directory, removed afterwards (also on failure).
Memory: the sum of the RSS of every process in the lab's namespaces, sampled every
0.25 s from the start of `up` until `--settle` seconds after convergence (or
configuration): the peak, which counts the playbooks' ansible processes.  Then the lab at
rest: the sum of RSS, which counts each shared page once per process, and of PSS
(proportional set size: shared pages split among the processes that map them), which is
what the lab takes from the machine; and each node's agent.  Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from common import add_converge_batch, emit, lab_settings, now, rss_mb

from picluster.lab import Lab, LabError, preflight


def pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def lab_mb(lab: Lab, measure: Callable[[int], float] = rss_mb) -> float:
    total = 0.0
    for pids in lab.pids().values():
        for pid in pids:
            try:
                total += measure(pid)
            except OSError:
                continue  # it ended between listing and reading
    return total


def measure(count: int, settle: float, fast: bool, settings: dict[str, object],
            configured: bool) -> dict[str, object]:
    lab = Lab(tempfile.mkdtemp(prefix="pcl-bench-", dir="/tmp"))
    peak, samples = 0.0, 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        while not stop.wait(0.25):
            try:
                peak, samples = max(peak, lab_mb(lab)), samples + 1
            except LabError:
                continue  # a namespace came or went between listing and reading it

    steps: dict[str, float] = {}

    def report(step: str, _done: int, _total: int) -> None:
        steps.setdefault(step.split(" (")[0], now())

    sampler = threading.Thread(target=sample, daemon=True)
    started = now()
    sampler.start()
    try:
        state = lab.up(count, fast=fast, settings=settings, report=report)
        converged = now() - started
        if configured:
            lab.configured(timeout=3600)
        configured_at = now() - started
        stop.wait(settle)
        stop.set()
        sampler.join()
        rest_rss, rest_pss = lab_mb(lab), lab_mb(lab, pss_mb)
        agents = {node.name: rss_mb(pid)
                  for node in lab.nodes if (pid := lab.agent_pid(node)) is not None}
    finally:
        stop.set()
        sampler.join()
        lab.down()
    return {
        "nodes": count,
        "fast": fast,
        "settings": settings,
        "converged_s": round(converged, 2),
        # of which: building the network, keys, git server and starting every node
        "all_booted_s": round(steps["registering"] - started, 2),
        "master": state.master,
        **({"configured_s": round(configured_at, 2)} if configured else {}),
        "peak_lab_rss_mib": round(peak, 1),
        "peak_lab_rss_mib_per_node": round(peak / count, 1),
        "rss_samples": samples,
        "rest_lab_rss_mib_per_node": round(rest_rss / count, 1),
        "rest_lab_pss_mib_per_node": round(rest_pss / count, 1),
        "agent_rss_mib": {name: round(rss, 1) for name, rss in agents.items()},
        "agent_rss_mib_mean": round(sum(agents.values()) / max(len(agents), 1), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to keep sampling memory after convergence")
    parser.add_argument("--slow", action="store_true", help="a real cluster's timings")
    parser.add_argument("--configured", action="store_true",
                        help="also wait until every node applied its role's playbooks")
    add_converge_batch(parser)
    options = parser.parse_args()
    problems = preflight()
    if problems:
        parser.exit(2, "\n".join(problems) + "\n")
    runs = [measure(count, options.settle, not options.slow, lab_settings(options),
                    options.configured)
            for count in options.nodes]
    emit({"bench": "lab_up", "cpus": os.cpu_count(), "runs": runs})


if __name__ == "__main__":
    main()
