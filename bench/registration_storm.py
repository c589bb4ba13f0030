"""Registration storm: N nodes register at once against one local bare repository.

Each node is a process with its own clone, forked after picluster is imported and
released by a barrier, so the clock measures git, not interpreter start-up.  The same
run measures the serialized ideal: one writer doing N fetch+commit+push cycles.

    python bench/registration_storm.py [--nodes 8 32 64] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import threading
import time
from pathlib import Path

from common import cluster_repo, emit, now, scratch

from picluster.gitstore import ClusterRepo, Put
from picluster.identity import NodeIdentity
from picluster.registry import read_membership, register


def node(bare: Path, root: Path, number: int, barrier: mp.Barrier, out: mp.Queue) -> None:
    mac = f"b827eb{number:06x}"
    repo = ClusterRepo(str(bare), root / f"node{number}" / "repo", writer=mac)
    repo.sync()  # the clone exists before the storm, as on a booted node
    barrier.wait()
    started = now()
    result = register(repo, NodeIdentity(mac, f"198.18.{number // 250}.{number % 250 + 2}"))
    out.put({"attempts": result.attempts, "seconds": now() - started})


def storm(root: Path, bare: Path, count: int) -> dict[str, object]:
    barrier, out = mp.Barrier(count + 1), mp.Queue()
    workers = [mp.Process(target=node, args=(bare, root, n, barrier, out))
               for n in range(1, count + 1)]
    for worker in workers:
        worker.start()
    observer = ClusterRepo(str(bare), root / f"observer{count}" / "repo", writer="observer")
    observer.sync()
    landed: dict[str, float] = {}

    def watch() -> None:
        while len(read_membership(observer.sync()).members) < count:
            time.sleep(0.02)
        landed["all"] = now()

    barrier.wait()
    started = now()
    watcher = threading.Thread(target=watch)
    watcher.start()
    reports = [out.get(timeout=600) for _ in workers]
    exited = now() - started
    for worker in workers:
        worker.join()
    watcher.join()
    membership = read_membership(observer.sync())
    attempts = sum(r["attempts"] for r in reports)
    return {"all_in_main_s": round(landed["all"] - started, 3),
            "all_exited_s": round(exited, 3),
            "push_attempts": attempts,
            "push_attempts_per_node": round(attempts / count, 2),
            "registered": len(membership.members),
            "masters": 1 if membership.master else 0}


def serialized_ideal(root: Path, bare: Path, count: int) -> float:
    """One writer, N compare-and-set cycles (fetch, commit, push), nothing to wait for."""
    repo = ClusterRepo(str(bare), root / "serial" / "repo", writer="serial")
    repo.sync()
    started = now()
    for number in range(count):
        repo.transact(lambda _s, n=number: [Put(f"local-vars/serial/{count}-{n}", f"{n}\n")],
                      f"serial {number}")
    return now() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--dir", help="where the repositories live (default: the temp dir)")
    args = parser.parse_args()
    mp.set_start_method("fork")
    results = []
    for count in args.nodes:
        with scratch(args.dir) as root:
            bare, _ = cluster_repo(root)
            ideal = serialized_ideal(root, bare, count)
            result = storm(root, bare, count)
            result = {"nodes": count, **result, "serialized_ideal_s": round(ideal, 3),
                      "ratio_to_ideal": round(result["all_in_main_s"] / ideal, 2)}
            results.append(result)
    emit({"benchmark": "registration_storm", "dir": args.dir or "tmp", "results": results})


if __name__ == "__main__":
    main()
