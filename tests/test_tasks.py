import json

import pytest

from picluster.node import catalogue
from picluster.tasks import Outcome, Task, TaskError, new_task_id

GOOD = {"id": "t1", "node": "b827eb000001", "task": "echo", "args": {"msg": "hi"},
        "created_at": "2026-11-25T14:30:00Z", "producer": "operator", "signature": "sig"}


def test_round_trip_and_optional_fields() -> None:
    task = Task.from_json(json.dumps(GOOD), "queue/b827eb000001/t1.json")
    assert task.retries == 0 and task.eta is None
    assert Task.from_json(task.to_json(), "x") == task


def test_the_signature_covers_everything_but_itself() -> None:
    task = Task.from_json(json.dumps(GOOD), "x")
    signed = json.loads(task.signed_bytes())
    assert "signature" not in signed and signed["node"] == "b827eb000001"
    other = Task.from_json(json.dumps({**GOOD, "node": "b827eb000002"}), "x")
    assert other.signed_bytes() != task.signed_bytes()


@pytest.mark.parametrize(("text", "words"), [
    ('{"id": "t1",\n "node": }', "line 2 column 10"),
    ("[1, 2]", "one JSON object"),
    (json.dumps({**GOOD, "evil": 1}), "unknown field(s) evil"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "task"}), "field 'task' is missing"),
    (json.dumps({**GOOD, "args": "x"}), "field 'args' has the wrong type"),
    (json.dumps({**GOOD, "retries": True}), "field 'retries' has the wrong type"),
    (json.dumps({**GOOD, "eta": "tomorrow"}), "not an ISO 8601 time"),
])
def test_malformed_task_files_name_file_line_and_field(text: str, words: str) -> None:
    with pytest.raises(TaskError) as caught:
        Task.from_json(text, "queue/b827eb000001/t1.json")
    assert str(caught.value).startswith("queue/b827eb000001/t1.json:")
    assert words in str(caught.value)


def test_outcome_paths() -> None:
    ok = Outcome(id="t1", node="b827eb000001", status="ok")
    rejected = Outcome(id="t1", node="b827eb000001", status="rejected")
    assert ok.path() == "queue/b827eb000001/done/t1.json"
    assert rejected.path() == "queue/b827eb000001/rejected/t1.json"
    assert Outcome.from_json(ok.to_json()) == ok


def test_ids_sort_by_time_and_builtins_exist() -> None:
    first, second = new_task_id(), new_task_id()
    assert first < second
    assert {"echo", "register", "sleep"} <= set(catalogue.names())


def test_timeout_and_retry_delay_appear_only_when_set() -> None:
    plain = Task.from_json(json.dumps(GOOD), "x")
    assert "timeout" not in plain.to_json() and b"retry_delay" not in plain.signed_bytes()
    timed = Task.from_json(json.dumps({**GOOD, "timeout": 5, "retry_delay": 0.5}), "x")
    assert timed.timeout == 5 and timed.retry_delay == 0.5
    assert json.loads(timed.signed_bytes())["timeout"] == 5
    assert Task.from_json(timed.to_json(), "x") == timed


@pytest.mark.parametrize(("field", "value", "words"), [
    ("timeout", 0, "'timeout' must be more than 0 to 86400"),
    ("timeout", 1e9, "'timeout' must be more than 0 to 86400"),
    ("retry_delay", -1, "'retry_delay' must be 0 to 86400"),
    ("timeout", "5", "field 'timeout' has the wrong type"),
])
def test_timeout_and_retry_delay_are_bounded(field: str, value: object, words: str) -> None:
    with pytest.raises(TaskError, match=words):
        Task.from_json(json.dumps({**GOOD, field: value}), "x")


def test_revoked_outcomes_go_with_the_rejected() -> None:
    revoked = Outcome(id="t1", node="b827eb000001", status="revoked")
    assert revoked.path() == "queue/b827eb000001/rejected/t1.json"
    assert Outcome(id="t1", node="b827eb000001", status="timeout").path() == \
        "queue/b827eb000001/done/t1.json"
