"""Task round trip and throughput against one real agent process.

    python bench/task_roundtrip.py roundtrip [--tasks 100] [--poll-interval 30] [--no-wakeups]
                                             [--task echo|run]
    python bench/task_roundtrip.py throughput [--tasks 1000] [--batch 100] [--task echo|run]

Round trip: one task at a time, from the producer's enqueue to the outcome visible in git
to the producer.  Throughput: tasks enqueued in batches; tasks/s from the first enqueue to
the last outcome in git.  The task is `echo`, or `run` of `true` (a process per task).

The node polls every --poll-interval seconds; the producer wakes it after each enqueue
unless --no-wakeups (wakeup_port: 0 in cluster.yml: the figure before wake-ups).  The
node's address is on loopback, so every wake-up stays on this machine.  It is a worker
(`master` names another MAC): a master with a local address would start Ganglia here.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import cluster_repo, emit, free_udp_port, now, percentile, scratch, write_config

from picluster import layout
from picluster.gitstore import ClusterRepo
from picluster.queue import enqueue, make_task, outcome_of, wait_for

NODE = "b827eb000001"
ARGS = {"echo": {}, "run": {"argv": ["true"]}}
NODE_IP = "127.18.0.11"
MASTER = "b827eb0000ff"  # registered by nobody: the node stays a worker


def start_agent(root: Path, bare: Path, poll_interval: float) -> subprocess.Popen[bytes]:
    config = write_config(root / "node.conf", repo=bare, home=root / "node", mac=NODE,
                          ip=NODE_IP, poll_interval=poll_interval, master_grace=0,
                          # every outcome stays: the observer counts them
                          keep_outcomes_per_node=1_000_000)
    log = (root / "agent.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "picluster", "--config", str(config),
                             "agent"], stdout=log, stderr=log)


def roundtrip(root: Path, bare: Path, key: Path, count: int, task: str) -> dict[str, object]:
    producer = ClusterRepo(str(bare), root / "producer" / "repo", writer="producer")
    producer.sync()
    (warm,) = enqueue(producer, [make_task(NODE, task, dict(ARGS[task]), "operator")], key)
    wait_for(producer, [warm], 120, interval=0.05)  # the agent is up and registered
    latencies = []
    for _ in range(count):
        started = now()
        (job,) = enqueue(producer, [make_task(NODE, task, dict(ARGS[task]), "operator")], key)
        assert wait_for(producer, [job], 60, interval=0.05)[job.id].status == "ok"
        latencies.append(now() - started)
    return {"tasks": count, "p50_s": round(percentile(latencies, 0.5), 3),
            "p95_s": round(percentile(latencies, 0.95), 3),
            "max_s": round(max(latencies), 3)}


def throughput(root: Path, bare: Path, key: Path, count: int, batch: int,
               task: str) -> dict[str, object]:
    producer = ClusterRepo(str(bare), root / "producer" / "repo", writer="producer")
    observer = ClusterRepo(str(bare), root / "observer" / "repo", writer="observer")
    observer.sync()
    producer.sync()
    tasks: list = []
    started = now()

    def produce() -> None:
        for first in range(0, count, batch):
            tasks.extend(enqueue(producer, [make_task(NODE, task, dict(ARGS[task]), "operator")
                                            for _ in range(first, min(first + batch, count))],
                                 key))

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join()
    enqueued = now() - started
    while True:
        snapshot = observer.sync()
        if all(outcome_of(snapshot, NODE, t.id) for t in tasks[-1:]) and \
                len(snapshot.listdir(f"queue/{NODE}/done", files=True)) >= count:
            break
        time.sleep(0.1)
    elapsed = now() - started
    return {"tasks": count, "batch": batch, "enqueue_s": round(enqueued, 3),
            "first_enqueue_to_last_outcome_s": round(elapsed, 3),
            "tasks_per_s": round(count / elapsed, 1), "target_tasks_per_s": 100}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["roundtrip", "throughput"])
    parser.add_argument("--tasks", type=int)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--task", choices=sorted(ARGS), default="echo")
    parser.add_argument("--poll-interval", type=float, default=30.0,
                        help="the node's poll_interval in seconds (default: 30, the default)")
    parser.add_argument("--no-wakeups", action="store_true",
                        help="wakeup_port: 0 in cluster.yml: tasks wait for the node's poll")
    parser.add_argument("--dir")
    args = parser.parse_args()
    with scratch(args.dir) as root:
        port = 0 if args.no_wakeups else free_udp_port(NODE_IP)
        bare, key = cluster_repo(root, {layout.CLUSTER_VARS: f"wakeup_port: {port}\n",
                                        layout.MASTER: f"{MASTER}\n"})
        agent = start_agent(root, bare, args.poll_interval)
        try:
            if args.mode == "roundtrip":
                result = roundtrip(root, bare, key, args.tasks or 100, args.task)
            else:
                result = throughput(root, bare, key, args.tasks or 1000, args.batch, args.task)
        finally:
            agent.send_signal(signal.SIGINT)
            agent.wait(timeout=60)
    settings = {"poll_interval_s": args.poll_interval, "wakeups": not args.no_wakeups}
    targets = {"target_p50_s": 0.3, "target_p95_s": 0.6} \
        if args.mode == "roundtrip" and not args.no_wakeups else {}
    emit({"benchmark": f"task_{args.mode}", "task": args.task, **settings, **result,
          **targets})


if __name__ == "__main__":
    main()
