import json
from dataclasses import replace

from helpers import Cluster, keypair, mac_of

from picluster.gitstore import Put
from picluster.queue import Pending, enqueue, make_task, read_signers, scan
from picluster.tasks import catalogue

NODE = mac_of(1)


def scanned(cluster: Cluster, known: set[str] | None = None) -> list[Pending]:
    """NODE's queue, checked against the signers the repository lists (a node checks
    against those it trusts: picluster.trust, tests/test_trust.py)."""
    snapshot = cluster.snapshot()
    return scan(snapshot, NODE, catalogue, known or set(), signers=read_signers(snapshot))


def rejections(cluster: Cluster) -> dict[str, str]:
    pending = scanned(cluster)
    return {p.path.rsplit("/", 1)[1]: p.rejection.error for p in pending if p.rejection}


def test_a_signed_task_passes(cluster: Cluster) -> None:
    (task,) = enqueue(cluster.operator_repo(), [make_task(NODE, "echo", {"a": 1}, "operator")],
                      cluster.operator_key)
    (pending,) = scanned(cluster)
    assert pending.task == task and pending.rejection is None
    assert scanned(cluster, known={task.id}) == []


def test_bad_tasks_are_rejected_with_the_reason(cluster: Cluster) -> None:
    repo = cluster.operator_repo()
    good = make_task(NODE, "echo", {}, "operator")
    unknown = make_task(NODE, "rm-rf", {}, "operator")
    elsewhere = make_task(mac_of(2), "echo", {}, "operator")
    signed_good, signed_unknown, signed_elsewhere = enqueue(
        repo, [good, unknown, elsewhere], cluster.operator_key)
    mallory = keypair(cluster.root / "mallory")
    (forged,) = enqueue(repo, [make_task(NODE, "echo", {}, "operator")], mallory)
    tampered = replace(signed_good, id="tampered", args={"evil": True})
    escaping = replace(signed_good, id="../../../etc/cron.d/x")
    folder = f"queue/{NODE}"
    repo.transact([
        Put(f"{folder}/tampered.json", tampered.to_json()),
        Put(f"{folder}/malformed.json", '{"id": "malformed",\n  oops}'),
        Put(f"{folder}/sneaky.json", escaping.to_json()),
        # Signed for node 2 and copied into node 1's queue as it is: only the address is wrong.
        Put(f"{folder}/{signed_elsewhere.id}.json", signed_elsewhere.to_json()),
        Put(f"{folder}/notes.txt", "hello"),
    ], "bad tasks")
    found = rejections(cluster)
    assert "unknown task 'rm-rf'" in found[f"{signed_unknown.id}.json"]
    assert "not a trusted signer" in found[f"{forged.id}.json"]
    assert "does not verify" in found["tampered.json"]
    assert "line 2 column 3" in found["malformed.json"]
    assert "field 'id' is '../../../etc/cron.d/x'" in found["sneaky.json"]
    assert found[f"{signed_elsewhere.id}.json"] == (
        f"{folder}/{signed_elsewhere.id}.json: addressed to node {mac_of(2)}, "
        f"but it is in {NODE}'s queue")
    assert "named <id>.json" in found["notes.txt"]
    assert f"{signed_good.id}.json" not in found


def test_a_rejection_keeps_the_original_and_gets_a_safe_name(cluster: Cluster) -> None:
    repo = cluster.operator_repo()
    repo.transact([Put(f"queue/{NODE}/we ird!.json", "{broken")], "weird name")
    (pending,) = scanned(cluster)
    outcome = pending.rejection
    assert outcome is not None and outcome.original == "{broken"
    assert outcome.path() == f"queue/{NODE}/rejected/invalid-we-ird.json"


def test_a_task_that_already_ran_is_not_run_again(cluster: Cluster) -> None:
    repo = cluster.operator_repo()
    (task,) = enqueue(repo, [make_task(NODE, "echo", {}, "operator")], cluster.operator_key)
    done = {"id": task.id, "node": NODE, "status": "ok"}
    repo.transact([Put(f"queue/{NODE}/done/{task.id}.json", json.dumps(done))], "replayed")
    (pending,) = scanned(cluster)
    assert pending.rejection and "never runs twice" in pending.rejection.error
