"""Repository growth with retention on: the bare repository's size, what `main` holds, a
new node's clone (shallow, as nodes clone; and full, for comparison), and the agent's own
clone (shallow, fetching all along) after N tasks.

    python bench/repo_growth.py [--tasks 1000 10000] [--batch 250] [--keep 1000]

One real agent (the master, so it runs retention; keep_outcomes_per_node = --keep) runs
`echo` tasks enqueued in batches; at each checkpoint, once every outcome is in and
retention has brought the queue within --keep, the repository is measured.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import cluster_repo, emit, now, scratch, write_config

from picluster import layout
from picluster.gitstore import ClusterRepo
from picluster.queue import enqueue, make_task

NODE = "b827eb000001"


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def clone(bare: Path, where: Path, shallow: bool) -> tuple[float, int]:
    """A new node's clone: seconds to a first snapshot, and its size on disk."""
    started = now()
    ClusterRepo(str(bare), where, writer="newcomer", shallow=shallow).sync()
    return now() - started, size(where)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def agent_clone(where: Path) -> dict[str, int]:
    """The agent's own clone: what it holds after fetching all along, and its garbage."""
    counts = dict(line.split(": ") for line in git(where, "count-objects", "-v").splitlines())
    return {"agent_clone_bytes": size(where),
            "agent_clone_commits": int(git(where, "rev-list", "--count", "origin/main")),
            "agent_clone_loose_objects": int(counts["count"]),
            "agent_clone_packed_objects": int(counts["in-pack"])}


def outcomes(observer: ClusterRepo) -> int:
    snapshot = observer.sync()
    folder = layout.queue_dir(NODE)
    return len(snapshot.listdir(f"{folder}/done", files=True)) + \
        len(snapshot.listdir(f"{folder}/rejected", files=True))


def pending(observer: ClusterRepo) -> int:
    return len(observer.sync().listdir(layout.queue_dir(NODE), files=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--keep", type=int, default=1000)
    parser.add_argument("--dir")
    args = parser.parse_args()
    checkpoints = []
    with scratch(args.dir) as root:
        bare, key = cluster_repo(root)
        config = write_config(root / "node.conf", repo=bare, home=root / "node", mac=NODE,
                              ip="198.18.0.11", poll_interval=1, master_grace=0,
                              keep_outcomes_per_node=args.keep)
        log = (root / "agent.log").open("wb")
        agent = subprocess.Popen([sys.executable, "-m", "picluster", "--config", str(config),
                                  "agent"], stdout=log, stderr=log)
        producer = ClusterRepo(str(bare), root / "producer" / "repo", writer="producer",
                               shallow=True)
        observer = ClusterRepo(str(bare), root / "observer" / "repo", writer="observer",
                               shallow=True)
        done = 0
        started = now()
        try:
            for target in sorted(args.tasks):
                while done < target:
                    count = min(args.batch, target - done)
                    enqueue(producer, [make_task(NODE, "echo", {}, "operator")
                                       for _ in range(count)], key)
                    done += count
                    while pending(observer) > 2 * args.batch:  # keep the queue short
                        time.sleep(0.2)
                while pending(observer) or outcomes(observer) > args.keep:
                    time.sleep(0.5)  # every outcome in, and retention done
                shallow_s, shallow_bytes = clone(bare, root / f"new-{target}" / "repo", True)
                full_s, full_bytes = clone(bare, root / f"full-{target}" / "repo", False)
                commits = git(bare, "rev-list", "--count", "main")
                checkpoints.append({
                    "tasks": target, "elapsed_s": round(now() - started, 1),
                    "commits": int(commits), "bare_bytes": size(bare),
                    "outcomes_in_main": outcomes(observer),
                    "new_node_shallow_clone_s": round(shallow_s, 3),
                    "new_node_shallow_clone_bytes": shallow_bytes,
                    "full_clone_s": round(full_s, 3), "full_clone_bytes": full_bytes,
                    **agent_clone(root / "node" / "repo")})
                print(checkpoints[-1], file=sys.stderr)
        finally:
            agent.send_signal(signal.SIGINT)
            agent.wait(timeout=60)
    emit({"benchmark": "repo_growth", "keep_outcomes_per_node": args.keep,
          "checkpoints": checkpoints, "target_new_node_clone_s_at_10000": 2.0})


if __name__ == "__main__":
    main()
