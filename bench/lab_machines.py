"""Machine nodes: seconds from `picluster lab up --nodes N --machines --fast` until every
node is in the master's MPI hostfile, with a cold and a warm cache, the memory each node
costs, and one node's first boot split into its steps.

    sudo python bench/lab_machines.py [--nodes 4 8] [--cold]

--cold builds the image and the wheelhouse into a cache of its own first (minutes; the
machine's cache, /var/cache/picluster-lab, is left alone) and runs the first N there.
Memory per node: the RSS and PSS of every process of the node's PID namespace (its
systemd, journald, sshd, the agent...), after `--settle` seconds; disk per node: what its
overlay holds.  First boot (a 1-node lab): from starting systemd-nspawn to
picluster.service active, split into cloud-init (boot, then cloud-init until it runs the
card's first-boot script), install (apt and pip, from the local mirror and the card's
wheels) and join (`picluster boot`: keys, hostname, clone, register, enabling the
service), read from the node's journal.  Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import emit, now

from picluster.lab import Lab, preflight
from picluster.lab.hosts import MachineNode
from picluster.lab.image import CACHE_ENV
from picluster.lab.procs import container_init


def _kib(pid: int, file: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def node_memory_mib(node: MachineNode, nspawn: int) -> tuple[float, float]:
    """(RSS, PSS) of every process in the node's PID namespace, in MiB."""
    init = container_init(nspawn)
    if init is None:
        return 0.0, 0.0
    pid_ns = os.stat(f"/proc/{init}/ns/pid").st_ino
    rss = pss = 0
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.stat(proc / "ns" / "pid").st_ino == pid_ns:
                rss += _kib(int(proc.name), "status", "VmRSS:")
                pss += _kib(int(proc.name), "smaps_rollup", "Pss:")
        except OSError:
            continue  # gone meanwhile
    return rss / 1024, pss / 1024


def disk_mib(path: Path) -> float:
    done = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True,
                          check=False)
    return int(done.stdout.split()[0]) / 1024 if done.returncode == 0 else 0.0


@contextmanager
def lab_of(prefix: str) -> Iterator[Lab]:
    lab = Lab(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield lab
    finally:
        lab.down()


def lab_up(count: int, settle: float, cache: str) -> dict[str, object]:
    with lab_of("pclm-bench-") as lab:
        steps: dict[str, float] = {}

        def report(step: str, _done: int, _total: int) -> None:
            steps.setdefault(step.split(" (")[0], now())

        started = now()
        lab.up(count, machines=True, fast=True, report=report)
        usable = now() - started
        subprocess.run(["sleep", str(settle)], check=True)
        memory = [node_memory_mib(node, int(node.pid_file("holder").read_text()))
                  for node in lab.nodes if isinstance(node, MachineNode)]
        disks = [disk_mib(node.disk) for node in lab.nodes if isinstance(node, MachineNode)]
    booting = steps["booting nodes"] - started
    return {
        "nodes": count, "cache": cache,
        "usable_s": round(usable, 1),  # every node in the master's hostfile
        # of which: image and wheelhouse (cold: built), keys, network, git server, wheel
        "before_first_boot_s": round(booting, 1),
        "boots_to_usable_s": round(usable - booting, 1),
        "node_rss_mib_mean": round(sum(rss for rss, _ in memory) / len(memory), 1),
        "node_pss_mib_mean": round(sum(pss for _, pss in memory) / len(memory), 1),
        "node_disk_mib_mean": round(sum(disks) / len(disks), 1),
    }


def journal_time(lab: Lab, node: str, pattern: str, *args: str) -> float | None:
    """When (Unix time) the node's journal of this boot first shows `pattern`."""
    done = lab.exec(node, ["journalctl", "-b", "-o", "short-unix", "--no-pager", *args],
                    capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if pattern in line:
            return float(line.split()[0])
    return None


def first_boot() -> dict[str, object]:
    with lab_of("pclm-boot-") as lab:
        lab.up(1, machines=True, fast=True)
        node = lab.nodes[0].name
        spawned = lab.nodes[0].pid_file("holder").stat().st_mtime
        marks = {
            "firstboot": journal_time(lab, node, "picluster-firstboot: installing"),
            "installed": journal_time(lab, node, "Successfully installed"),
            "active": journal_time(lab, node, "Started picluster.service"),
        }
    if None in marks.values():
        return {"error": f"missing journal marks: {marks}"}
    return {
        "cloud_init_s": round(marks["firstboot"] - spawned, 1),
        "install_s": round(marks["installed"] - marks["firstboot"], 1),
        "join_s": round(marks["active"] - marks["installed"], 1),
        "card_to_service_active_s": round(marks["active"] - spawned, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--cold", action="store_true",
                        help="first run N=first of --nodes with an empty cache of its own")
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds after `up` before memory is read")
    options = parser.parse_args()
    problems = preflight(machines=True)
    if problems:
        parser.exit(2, "\n".join(problems) + "\n")
    runs = []
    if options.cold:
        with tempfile.TemporaryDirectory(prefix="picluster-cold-cache-",
                                         dir="/var/tmp") as cache:
            os.environ[CACHE_ENV] = cache
            runs.append(lab_up(options.nodes[0], options.settle, "cold"))
            del os.environ[CACHE_ENV]
    runs += [lab_up(count, options.settle, "warm") for count in options.nodes]
    emit({"bench": "lab_machines", "cpus": os.cpu_count(), "runs": runs,
          "first_boot": first_boot()})


if __name__ == "__main__":
    main()
