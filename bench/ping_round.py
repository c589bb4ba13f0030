"""One Ansible ping round from the master, for 4, 8 and 16 nodes: wall time and the
master's CPU (ansible and ssh included).

    sudo python bench/ping_round.py [--nodes 4 8 16] [--rounds 5]

Each N gets a lab with default timings (the master's own pings wait out the 5-minute
grace, so they do not interfere); the rounds run in the master's namespaces through the
same code the master's ping job uses.  Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import emit

from picluster.lab import Lab

# Runs inside the master node: the master's own ping, timed.
_ROUND = """
import json, resource, sys, time
from picluster import ansible
from picluster.registry import read_cluster_vars, read_membership
from picluster.files import install_file
from picluster.master.views import render_views
from picluster.gitstore import ClusterRepo
from picluster.settings import Settings

settings = Settings.load(sys.argv[1])
snapshot = ClusterRepo.from_settings(settings, "bench").sync()
membership = read_membership(snapshot)
install_file(settings.cluster_known_hosts, render_views(membership, "root").known_hosts)
hosts = {m.ip: {"mac": m.mac} for m in membership.workers}
rounds = []
for _ in range(int(sys.argv[2]) + 1):  # the first one opens the ssh connections
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    run = ansible.ping(settings, hosts, read_cluster_vars(snapshot).ssh_user,
                       settings.cluster_known_hosts)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
           + self_after.ru_utime + self_after.ru_stime - self_before.ru_utime
           - self_before.ru_stime)
    rounds.append({"wall_s": wall, "cpu_s": cpu,
                   "ok": sum(h.status == "ok" for h in run.hosts.values())})
print(json.dumps({"hosts": len(hosts), "rounds": rounds[1:], "first": rounds[0]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    results = []
    for count in args.nodes:
        lab = Lab(tempfile.mkdtemp(prefix="pcl-ping-", dir="/tmp"))
        try:
            lab.up(count)
            master = next(s for s in lab.status() if s.role == "master")
            script = Path(lab.dir) / "ping_round.py"
            script.write_text(_ROUND)
            done = lab.exec(master.name, [sys.executable, str(script),
                                          str(lab.node(master.name).config), str(args.rounds)],
                            capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            data = json.loads(done.stdout.strip().splitlines()[-1])
            walls = [r["wall_s"] for r in data["rounds"]]
            cpus = [r["cpu_s"] for r in data["rounds"]]
            results.append({"nodes": count, "pinged": data["hosts"],
                            "all_ok": all(r["ok"] == data["hosts"] for r in data["rounds"]),
                            "wall_s_median": round(statistics.median(walls), 3),
                            "wall_s_max": round(max(walls), 3),
                            "master_cpu_s_median": round(statistics.median(cpus), 3),
                            "first_round_wall_s": round(data["first"]["wall_s"], 3)})
        finally:
            (Path(lab.dir) / "ping_round.py").unlink(missing_ok=True)
            lab.down()
    emit({"benchmark": "ping_round", "rounds": args.rounds, "results": results})


if __name__ == "__main__":
    main()
