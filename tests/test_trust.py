"""Trust that does not live in the repository it guards: the signers a node trusts (the
card's anchor, else trust on first use, then only signed changes), and registrations the
master acts on only when the cluster key signed them.  Real bare repositories, real agent
processes."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Cluster, ip_of, keypair, mac_of, run_cli, wait_until

from picluster import layout
from picluster.master.members import Members
from picluster.node import catalogue
from picluster.queue import enqueue, make_task, outcome_of
from picluster.registry import read_membership, verify_registrations
from picluster.settings import Settings
from picluster.signing import NODE_NAMESPACE, TRUST_NAMESPACE, public_key_of, sign, signer_line
from picluster.tasks import TaskContext
from picluster.trust import judge

NODE = mac_of(1)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A cluster repository made as the README says: `init-repo --signer` (the operator
    may sign tasks and changes to allowed_signers)."""
    key = keypair(tmp_path / "operator_key", "operator")
    bare = tmp_path / "cluster.git"
    done = run_cli("init-repo", str(bare), "--signer", f"{key}.pub")
    assert done.returncode == 0, done.stderr
    made = Cluster(tmp_path, bare, key)
    try:
        yield made
    finally:
        made.stop_agents()


def public(key: Path) -> str:
    return Path(f"{key}.pub").read_text()


def push_by_hand(cluster: Cluster, files: dict[str, str], message: str) -> None:
    """A plain `git push` by someone who can write to the repository: a clone, an edit, a
    commit, a push; no picluster involved."""
    work = cluster.root / "by-hand"
    if not work.exists():
        subprocess.run(["git", "clone", "-q", str(cluster.bare), str(work)], check=True)
    git = ["git", "-C", str(work), "-c", "user.name=someone", "-c", "user.email=x@y"]
    subprocess.run([*git, "pull", "-q", "--rebase"], check=True)
    for path, text in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_text(text)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)
    # Agents push meanwhile (registrations, outcomes): as a person would, pull and retry.
    for _ in range(20):
        if subprocess.run([*git, "push", "-q", "origin", "HEAD:main"]).returncode == 0:
            return
        subprocess.run([*git, "pull", "-q", "--rebase"], check=True)
    raise AssertionError("could not push by hand: the remote kept moving")


def outcome(cluster: Cluster, task_id: str, mac: str = NODE) -> dict[str, object] | None:
    found = outcome_of(cluster.snapshot(), mac, task_id)
    return json.loads(found.to_json()) if found else None


def log_of(config: Path) -> str:
    return config.with_suffix(".log").read_text()


# -- the signers a node trusts ---------------------------------------------------------------


def test_a_key_added_by_a_plain_push_never_gets_a_task_run(cluster: Cluster) -> None:
    # As the README goes: the operator trusts the cluster key first.
    cluster_key = keypair(cluster.root / "cluster_key", "cluster")
    done = run_cli("trust", f"{cluster_key}.pub", "--name", "cluster",
                   config=cluster.operator_config())
    assert done.returncode == 0, done.stderr
    config = cluster.node_config(1)
    cluster.start_agent(config)
    home = Settings.load(config).home
    pinned = home / "trust" / "allowed_signers"
    wait_until(pinned.exists, 30, "the node to pin its signers")
    assert "trust on first use" in log_of(config)
    assert not pinned.is_relative_to(home / "repo")
    before = pinned.read_text()

    # mallory can push: she lists herself, even as one who may change the file, and signs
    # the file with her own key.
    mallory = keypair(cluster.root / "mallory", "mallory")
    current = cluster.snapshot().read(layout.ALLOWED_SIGNERS) or ""
    hacked = current + signer_line(public(mallory), "mallory", admin=True) + "\n"
    (signature,) = sign([hacked.encode()], mallory, TRUST_NAMESPACE)
    push_by_hand(cluster, {layout.ALLOWED_SIGNERS: hacked,
                           layout.ALLOWED_SIGNERS_SIG: signature}, "trust mallory")
    repo = cluster.operator_repo()
    (evil,) = enqueue(repo, [make_task(NODE, "echo", {"pwned": True}, "mallory")], mallory)
    done = run_cli("enqueue", NODE, "echo", "--arg", "msg=still here", "--wait", "30",
                   config=cluster.operator_config())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == {"msg": "still here"}

    rejected = wait_until(lambda: outcome(cluster, evil.id), 30, "mallory's task's outcome")
    assert rejected["status"] == "rejected"  # type: ignore[index]
    assert "not a trusted signer for 'mallory'" in rejected["error"]  # type: ignore[index]
    assert pinned.read_text() == before
    wait_until(lambda: log_of(config).count("no signer this node trusts signed") >= 1, 10,
               "the agent to report the change")
    # Reported once for this content, however many polls saw it.
    run_cli("enqueue", NODE, "echo", "--wait", "30", config=cluster.operator_config())
    assert log_of(config).count("no signer this node trusts signed") == 1

    status = run_cli("status", "--json", config=config)
    problems = json.loads(status.stdout)["problems"]
    assert any(p.startswith(f"{layout.ALLOWED_SIGNERS}: changed, but no signer this node "
                            "trusts signed") and "is not one of the signers allowed" in p
               for p in problems), problems

    # The operator's `trust` does not sign on top of a change nobody trusted signed.
    bob = keypair(cluster.root / "bob", "bob")
    refused = run_cli("trust", f"{bob}.pub", "--name", "bob", config=cluster.operator_config())
    assert refused.returncode == 2
    assert "no signer this node trusts signed" in refused.stderr and "--sign" in refused.stderr


def test_a_change_the_operator_signs_is_taken(cluster: Cluster) -> None:
    config = cluster.node_config(1)
    cluster.start_agent(config)
    pinned = Settings.load(config).home / "trust" / "allowed_signers"
    wait_until(pinned.exists, 30, "the node to pin its signers")

    bob = keypair(cluster.root / "bob", "bob")
    done = run_cli("trust", f"{bob}.pub", "--name", "bob", config=cluster.operator_config())
    assert done.returncode == 0, done.stderr
    assert "bob is now a trusted task signer" in done.stdout
    snapshot = cluster.snapshot()
    assert snapshot.read(layout.ALLOWED_SIGNERS_SIG)
    (task,) = enqueue(cluster.operator_repo(), [make_task(NODE, "echo", {"by": "bob"}, "bob")],
                      bob)
    ran = wait_until(lambda: outcome(cluster, task.id), 30, "bob's task's outcome")
    assert ran["status"] == "ok", ran  # type: ignore[index]
    assert "that operator signed" in log_of(config)
    assert "bob" in pinned.read_text()
    status = json.loads(run_cli("status", "--json", config=config).stdout)
    assert not [p for p in status["problems"] if p.startswith(layout.ALLOWED_SIGNERS)]

    # bob signs tasks, not changes to allowed_signers.
    bob_config = cluster.root / "bob.conf"
    bob_config.write_text(f"repo = {cluster.bare}\nhome = {cluster.root / 'bob-home'}\n"
                          f"signing_key = {bob}\nsigner = bob\n")
    carol = keypair(cluster.root / "carol", "carol")
    refused = run_cli("trust", f"{carol}.pub", "--name", "carol", config=bob_config)
    assert refused.returncode == 2
    assert "may not change local-vars/allowed_signers" in refused.stderr


def test_trust_without_a_signing_key_is_one_line_and_exit_2(cluster: Cluster) -> None:
    config = cluster.root / "plain.conf"
    config.write_text(f"repo = {cluster.bare}\nhome = {cluster.root / 'plain'}\n")
    done = run_cli("trust", f"{cluster.operator_key}.pub", "--name", "x", config=config)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "'signing_key' is not set" in done.stderr


def test_the_cards_anchor_is_installed_outside_the_clone_and_wins(cluster: Cluster,
                                                                  tmp_path: Path) -> None:
    card = tmp_path / "bootfs"
    card.mkdir()
    cluster_key = keypair(tmp_path / "cluster_key", "cluster")
    refused = run_cli("prepare-boot", str(card), "--force", "--repo", str(cluster.bare),
                      "--key", str(cluster_key), "--signer", str(cluster.operator_key))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "--signer" in refused.stderr and list(card.iterdir()) == []
    done = run_cli("prepare-boot", str(card), "--force", "--repo", str(cluster.bare),
                   "--key", str(cluster_key), "--signer", f"{cluster.operator_key}.pub")
    assert done.returncode == 0, done.stderr
    anchor = (card / "picluster_signers").read_text()
    assert 'namespaces="picluster-task,picluster-trust"' in anchor
    config = card / "picluster.conf"
    home = tmp_path / "home"
    with config.open("a") as file:
        file.write(f"home = {home}\nuser_ssh_dir = {tmp_path / 'root-ssh'}\n"
                   f"etc_dir = {tmp_path / 'etc'}\nmac = {NODE}\nip = {ip_of(1)}\n"
                   "poll_interval = 0.5\nmaster_grace = 0\n")
    # Whatever the node trusted before (here: mallory), the card's anchor wins.
    mallory = keypair(tmp_path / "mallory", "mallory")
    trusted = home / "trust" / "allowed_signers"
    trusted.parent.mkdir(parents=True)
    trusted.write_text(signer_line(public(mallory), "mallory", admin=True) + "\n")

    cluster.start_agent(config, "boot", "--foreground")
    wait_until(lambda: cluster.snapshot().read(layout.ip_path(NODE)), 60, "the node to join")
    assert trusted.read_text() == anchor
    assert not trusted.is_relative_to(home / "repo")
    assert "installed the trust anchor" in log_of(config)
    assert "trust on first use" not in log_of(config)
    repo = cluster.operator_repo()
    (evil,) = enqueue(repo, [make_task(NODE, "echo", {}, "mallory")], mallory)
    done = run_cli("enqueue", NODE, "echo", "--arg", "msg=anchored", "--wait", "30",
                   config=cluster.operator_config())
    assert done.returncode == 0, (done.stderr, log_of(config))
    rejected = wait_until(lambda: outcome(cluster, evil.id), 30, "mallory's task's outcome")
    assert rejected["status"] == "rejected"  # type: ignore[index]
    # The registration boot made is signed with the cluster key on the card.
    assert cluster.snapshot().read(layout.registration_sig_path(NODE))


def test_an_anchor_that_cannot_be_read_stops_the_agent_with_one_line(cluster: Cluster) -> None:
    config = cluster.node_config(1, trust_anchor="absent_signers")
    done = run_cli("agent", config=config, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "trust_anchor" in done.stderr and "absent_signers" in done.stderr


def test_what_a_node_makes_of_the_repositorys_signers(tmp_path: Path) -> None:
    operator, cluster_key = keypair(tmp_path / "op"), keypair(tmp_path / "cluster")
    first = "# seed\n" + signer_line(public(operator), "operator", admin=True) + "\n"
    plus = first + signer_line(public(cluster_key), "cluster") + "\n"

    def signed(text: str, key: Path, namespace: str = TRUST_NAMESPACE) -> str:
        return sign([text.encode()], key, namespace)[0]

    tofu = judge(None, first, None)
    assert tofu.trusted == first and tofu.news and "trust on first use" in tofu.news
    assert "(operator)" in tofu.news
    assert judge(None, "# nobody yet\n", None).news is None
    # A node's first look at a file pushed on top of a signed one trusts nobody.
    pushed = judge(None, plus + "x ssh-ed25519 AAAA\n", signed(plus, operator))
    assert pushed.trusted == "" and "changed since it was signed" in (pushed.problem or "")
    assert judge(None, plus, signed(plus, operator)).trusted == plus
    # Rotating the operator key: the old key signs a file that lists only the new one.
    new_key = keypair(tmp_path / "new")
    rotated = "# seed\n" + signer_line(public(new_key), "operator2", admin=True) + "\n"
    assert judge(first, rotated, signed(rotated, operator)).trusted == rotated
    assert judge(None, rotated, signed(rotated, operator)).trusted == rotated
    assert judge(first, "# a new comment\n" + first, None).problem is None
    assert "no local-vars/allowed_signers.sig" in (judge(first, plus, None).problem or "")
    taken = judge(first, plus, signed(plus, operator))
    assert taken.trusted == plus and taken.problem is None
    # Signed by a signer that may sign tasks only (the cluster key is on every card)...
    only_tasks = judge(plus, plus + "# x\nx ssh-ed25519 AAAA\n", signed(plus, cluster_key))
    assert only_tasks.trusted == plus and only_tasks.problem
    # ... or a task signature passed off as one of allowed_signers: ignored.
    replayed = judge(first, plus, signed(plus, operator, namespace="picluster-task"))
    assert replayed.trusted == first and "does not verify" in (replayed.problem or "")


# -- registrations ------------------------------------------------------------------------


def forge_registration(cluster: Cluster, number: int, ip: str, *, signed: bool = True) -> None:
    """What someone who can push but lacks the cluster key writes: an IP, facts with a
    host key of theirs, and (when `signed`) a signature by a key of their own."""
    mac = mac_of(number)
    mallory = keypair(cluster.root / f"forger{number}", "forger")
    facts = ("hostname: evil\ncores: 64\nhost_key: ssh-ed25519 "
             "AAAAC3NzaC1lZDI1NTE5AAAAIForgedForgedForgedForgedForgedForgedFor\n")
    message = (f"picluster registration\nmac {mac}\nip {ip}\n{layout.facts_path(mac)}:\n"
               f"{facts}").encode()
    files = {layout.ip_path(mac): f"{ip}\n", layout.facts_path(mac): facts}
    if signed:
        files[layout.registration_sig_path(mac)] = sign([message], mallory, NODE_NAMESPACE)[0]
    push_by_hand(cluster, files, f"register {mac}")


def test_a_forged_registration_never_reaches_the_masters_views(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    cluster_key = keypair(tmp_path / "cluster_key", "cluster")
    forge_registration(cluster, 9, "203.0.113.9")
    forge_registration(cluster, 8, "203.0.113.8", signed=False)

    master = cluster.node_config(1, ssh_key=cluster_key, master="true")
    host_key = keypair(tmp_path / "host2", "root@pi-2")
    worker = cluster.node_config(2, ssh_key=cluster_key, host_key=f"{host_key}.pub")
    cluster.start_agent(master)
    wait_until(lambda: cluster.snapshot().read(layout.MASTER), 30, "node 1 to hold master")
    cluster.start_agent(worker)
    settings = Settings.load(master)
    wait_until(lambda: settings.hostfile.exists() and ip_of(2) in settings.hostfile.read_text(),
               60, "the honest worker to reach the master's hostfile")

    known_hosts = settings.cluster_known_hosts.read_text()
    assert public(host_key).split()[1] in known_hosts  # the honest node's host key
    snapshot = cluster.snapshot()
    for forged in ("203.0.113.9", "203.0.113.8"):
        for path in settings.rendered_dir.iterdir():
            if path.is_file():
                assert forged not in path.read_text(), path
        assert forged not in (snapshot.read(layout.HOSTFILE) or "")
        assert forged not in (snapshot.read(layout.INVENTORY) or "")
    assert "Forged" not in known_hosts
    for number in (8, 9):  # no Ganglia config sent, nothing deleted
        assert snapshot.listdir(layout.queue_dir(mac_of(number))) == []
        assert snapshot.read(layout.ip_path(mac_of(number)))

    status = json.loads(run_cli("status", "--json", config=master).stdout)
    assert {node["mac"] for node in status["nodes"]} == {mac_of(1), mac_of(2)}
    why = {mac_of(9): "is not one of the cluster keys", mac_of(8): "there is no"}
    for mac, reason in why.items():
        assert any(p.startswith(f"ip/{mac}: the registration of") and reason in p
                   for p in status["problems"]), status["problems"]
    log = log_of(master)
    assert log.count(f"ip/{mac_of(9)}: the registration of") == 1  # once per change


def test_a_task_that_registers_signs_what_it_registers(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    # The register and ganglia tasks re-register (new facts) with their outcome: a
    # registration that lost its signature would drop the node from the views meanwhile.
    cluster_key = keypair(tmp_path / "cluster_key", "cluster")
    settings = Settings.load(cluster.node_config(1, ssh_key=cluster_key))
    task = make_task(NODE, "register", {}, "operator")
    for cores in (2, 4):
        context = TaskContext(settings, task, lambda cores=cores: {"cores": cores})
        catalogue.get("register")({}, context)  # type: ignore[misc]
        cluster.operator_repo().transact(context.ops, "register by task")
        snapshot = cluster.snapshot()
        verified, refused = verify_registrations(snapshot, read_membership(snapshot),
                                                 public_key_of(cluster_key))
        assert refused == {} and verified.get(NODE).cores == cores  # type: ignore[union-attr]


def test_a_master_without_the_cluster_key_warns_once_and_status_says_so(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    forge_registration(cluster, 9, "203.0.113.9")
    settings = Settings.load(cluster.node_config(1))
    snapshot = cluster.snapshot()
    members = Members(settings)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert members.read(snapshot) == read_membership(snapshot)
    assert [r.message for r in caplog.records].count(
        f"{settings.source} sets no ssh_key: registrations cannot be verified, and every one "
        "reaches the views as written") == 1
    status = json.loads(run_cli("status", "--json", config=settings.source).stdout)
    assert any(p.startswith("registrations are not verified") for p in status["problems"])
    assert mac_of(9) in {node["mac"] for node in status["nodes"]}
