"""Footprint of an idle agent: RSS and CPU over a window, with poll_interval = 30, on a
worker (another node holds `master`) and on a master, one after the other.

    python bench/agent_footprint.py [--seconds 60] [--roles worker master]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import cluster_repo, cpu_seconds, emit, rss_mb, scratch, write_config

from picluster import layout
from picluster.gitstore import ClusterRepo, Create

_OTHER_MASTER = "b827eb0000ff"  # a worker's master: a node that never runs here


def measure(root: Path, role: str, seconds: float) -> dict[str, object]:
    bare, _ = cluster_repo(root)
    if role == "worker":
        ClusterRepo(str(bare), root / "seed" / "repo").transact(
            [Create(layout.MASTER, f"{_OTHER_MASTER}\n")], "another node is master")
    config = write_config(root / "node.conf", repo=bare, home=root / "node",
                          mac="b827eb000001", ip="198.18.0.11", poll_interval=30,
                          master_grace=0)
    agent = subprocess.Popen([sys.executable, "-m", "picluster", "--config", str(config),
                              "agent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(5)  # start-up: imports, clone, registration
        cpu_before, started = cpu_seconds(agent.pid), time.monotonic()
        peak = 0.0
        while time.monotonic() - started < seconds:
            peak = max(peak, rss_mb(agent.pid))
            time.sleep(1)
        cpu = cpu_seconds(agent.pid) - cpu_before
        window = time.monotonic() - started
        children = subprocess.run(["ps", "--ppid", str(agent.pid), "-o", "pid="],
                                  capture_output=True, text=True).stdout.split()
    finally:
        agent.send_signal(signal.SIGINT)
        agent.wait(timeout=60)
    return {"role": role, "window_s": round(window, 1), "rss_peak_mb": round(peak, 1),
            "cpu_percent": round(100 * cpu / window, 3), "live_children": len(children)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--roles", nargs="+", choices=["worker", "master"],
                        default=["worker", "master"])
    parser.add_argument("--dir")
    args = parser.parse_args()
    runs = []
    for role in args.roles:
        with scratch(args.dir) as root:
            runs.append(measure(root, role, args.seconds))
    emit({"benchmark": "agent_footprint", "poll_interval_s": 30, "runs": runs,
          "note": "cpu includes the git commands the agent ran",
          "target_rss_mb": {"worker": 40}, "target_cpu_percent": 1})


if __name__ == "__main__":
    main()
