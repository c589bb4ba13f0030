"""Footprint of an idle agent: RSS and CPU over a window, with poll_interval = 30.

    python bench/agent_footprint.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from common import cluster_repo, cpu_seconds, emit, rss_mb, scratch, write_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--dir")
    args = parser.parse_args()
    with scratch(args.dir) as root:
        bare, _ = cluster_repo(root)
        config = write_config(root / "node.conf", repo=bare, home=root / "node",
                              mac="b827eb000001", ip="198.18.0.11", poll_interval=30,
                              master_grace=0)
        agent = subprocess.Popen([sys.executable, "-m", "picluster", "--config", str(config),
                                  "agent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(5)  # start-up: imports, clone, registration
            cpu_before, started = cpu_seconds(agent.pid), time.monotonic()
            peak = 0.0
            while time.monotonic() - started < args.seconds:
                peak = max(peak, rss_mb(agent.pid))
                time.sleep(1)
            cpu = cpu_seconds(agent.pid) - cpu_before
            window = time.monotonic() - started
            children = subprocess.run(["ps", "--ppid", str(agent.pid), "-o", "pid="],
                                      capture_output=True, text=True).stdout.split()
        finally:
            agent.send_signal(signal.SIGINT)
            agent.wait(timeout=60)
    emit({"benchmark": "agent_footprint", "window_s": round(window, 1), "poll_interval_s": 30,
          "rss_peak_mb": round(peak, 1), "cpu_percent": round(100 * cpu / window, 3),
          "live_children": len(children),
          "note": "cpu includes the git commands the agent ran",
          "target_rss_mb": 80, "target_cpu_percent": 1})


if __name__ == "__main__":
    main()
