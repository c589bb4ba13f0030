"""One ping round from the master, for 4, 8 and 16 nodes: wall time and the master's CPU
(ssh included), for the master's ping and, with --ansible, for Ansible's ping module run
through ansible-runner (what the master ran before), in the same lab, one after the other.

    sudo python bench/ping_round.py [--nodes 4 8 16] [--rounds 5] [--ansible]
                                    [--converge-batch N]

Each N gets a lab with default timings, configured (every node applied its role's
playbooks; --converge-batch sets how many nodes at once) before the rounds; the rounds
run in the master's namespaces through the same code the master's ping job uses.  The
kept ssh connections (ControlPersist masters) run apart from the pinging process: their
CPU is counted separately (mux_cpu_s).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import add_converge_batch, emit, lab_settings

from picluster.lab import Lab

# Runs inside the master node: the master's own ping, timed.
_ROUND = """
import json, os, resource, sys, time
from pathlib import Path
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
user = read_cluster_vars(snapshot).ssh_user


def mux_cpu():
    # The ControlPersist masters of this node's ssh dir: "ssh: <socket> [mux]".
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
            if title.startswith("ssh: " + str(settings.ssh_dir)) and "[mux]" in title:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            continue
    return total


def ansible_module_ping():
    # Ansible's ping module through ansible-runner: the master's ping before this change.
    return ansible._run(settings, settings.cluster_known_hosts, "ping", module="ping",
                        host_pattern="all", inventory=ansible.inventory({"nodes": hosts}, user),
                        forks=max(1, len(hosts)))


kinds = {"ssh": lambda: ansible.ping(settings, hosts, user, settings.cluster_known_hosts)}
if sys.argv[3] == "1":
    kinds["ansible"] = ansible_module_ping
results = {}
for kind, ping in kinds.items():
    rounds = []
    for _ in range(int(sys.argv[2]) + 1):  # the first one opens the ssh connections
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        mux_before = mux_cpu()
        started = time.monotonic()
        run = ping()
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
               + self_after.ru_utime + self_after.ru_stime - self_before.ru_utime
               - self_before.ru_stime)
        rounds.append({"wall_s": wall, "cpu_s": cpu, "mux_cpu_s": mux_cpu() - mux_before,
                       "ok": sum(h.status == "ok" for h in run.hosts.values())})
    results[kind] = {"rounds": rounds[1:], "first": rounds[0]}
print(json.dumps({"hosts": len(hosts), "kinds": results}))
"""


def summary(hosts: int, data: dict[str, object]) -> dict[str, object]:
    rounds = data["rounds"]
    walls = [r["wall_s"] for r in rounds]
    return {"all_ok": all(r["ok"] == hosts for r in rounds),
            "wall_s_median": round(statistics.median(walls), 3),
            "wall_s_max": round(max(walls), 3),
            "master_cpu_s_median": round(statistics.median(r["cpu_s"] for r in rounds), 3),
            "mux_cpu_s_median": round(statistics.median(r["mux_cpu_s"] for r in rounds), 3),
            "first_round_wall_s": round(data["first"]["wall_s"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ansible", action="store_true",
                        help="also time Ansible's ping module through ansible-runner")
    add_converge_batch(parser)
    args = parser.parse_args()
    results = []
    for count in args.nodes:
        lab = Lab(tempfile.mkdtemp(prefix="pcl-ping-", dir="/tmp"))
        try:
            lab.up(count, settings=lab_settings(args))
            # A cluster at rest: on one machine, many netns nodes applying their first
            # playbooks at once (check mode, each its own ansible-playbook) would be
            # timed instead of the ping.  On Pis each node runs only its own.
            lab.configured(timeout=3600)
            master = next(s for s in lab.status() if s.role == "master")
            script = Path(lab.dir) / "ping_round.py"
            script.write_text(_ROUND)
            done = lab.exec(master.name, [sys.executable, str(script),
                                          str(lab.node(master.name).config), str(args.rounds),
                                          "1" if args.ansible else "0"],
                            capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            data = json.loads(done.stdout.strip().splitlines()[-1])
            results.append({"nodes": count, "pinged": data["hosts"],
                            **{kind: summary(data["hosts"], kind_data)
                               for kind, kind_data in data["kinds"].items()}})
        finally:
            (Path(lab.dir) / "ping_round.py").unlink(missing_ok=True)
            lab.down()
    emit({"benchmark": "ping_round", "rounds": args.rounds, "settings": lab_settings(args),
          "results": results})


if __name__ == "__main__":
    main()
