"""The built-in `run` task: a command on the node, its exit code and capped output, its
timeout, and the refusals; directly, and through git with a real agent."""

import json
import os
import time
from pathlib import Path

import pytest
from helpers import Cluster, mac_of, run_cli

from picluster.node import catalogue
from picluster.node.command import CAP
from picluster.settings import Settings
from picluster.tasks import Task, TaskContext, TaskError, TaskFailed, TaskTimedOut

NODE = mac_of(1)


def run(**args: object) -> dict:
    """The `run` task's result for `args`, as a consumer thread would call it."""
    task = Task(id="t", node=NODE, task="run", args=dict(args), created_at="", producer="")
    context = TaskContext(Settings(repo="/nowhere"), task, dict)
    function = catalogue.get("run")
    assert function is not None
    return function(dict(args), context)


def test_a_command_returns_its_exit_code_and_output() -> None:
    result = run(argv=["sh", "-c", "echo out; echo err >&2"])
    assert result["exit_code"] == 0 and result["timed_out"] is False
    assert result["stdout"] == "out\n" and result["stderr"] == "err\n"
    assert result["cap_bytes"] == CAP and result["stdout_truncated"] is False


def test_no_shell_unless_asked(tmp_path: Path) -> None:
    assert run(argv=["echo", "$HOME", "*"])["stdout"] == "$HOME *\n"
    shelled = run(argv=["echo $GREETING \"$1\"", "you"], shell=True, env={"GREETING": "hi"})
    assert shelled["stdout"] == "hi you\n"
    assert run(argv=["pwd"], cwd=str(tmp_path))["stdout"] == f"{tmp_path}\n"


def test_a_failing_command_keeps_its_output() -> None:
    with pytest.raises(TaskFailed) as caught:
        run(argv=["sh", "-c", "echo partial; exit 3"])
    assert str(caught.value) == "exit code 3"
    assert caught.value.status == "error"
    assert caught.value.result["exit_code"] == 3
    assert caught.value.result["stdout"] == "partial\n"


def test_ten_megabytes_of_output_keep_a_capped_tail_and_say_so() -> None:
    result = run(argv=["sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' x; echo END"])
    assert result["stdout_bytes"] == 10_000_004
    assert result["stdout_truncated"] is True
    assert len(result["stdout"].encode()) == CAP == result["cap_bytes"]
    assert result["stdout"].endswith("xxEND\n")


def test_a_hang_is_stopped_at_its_timeout_with_its_whole_group() -> None:
    started = time.monotonic()
    with pytest.raises(TaskTimedOut) as caught:
        # The child ignores SIGTERM and leaves a grandchild holding stdout open.
        run(argv=["sh", "-c", "trap '' TERM; echo started; sleep 60 & sleep 60"], timeout=1)
    assert time.monotonic() - started < 10
    assert caught.value.status == "timeout"
    assert "timed out after 1 s" in str(caught.value)
    assert caught.value.result["timed_out"] is True
    assert caught.value.result["stdout"] == "started\n"


def test_a_missing_program_or_directory_fails_clearly() -> None:
    with pytest.raises(FileNotFoundError, match="program 'no-such-program' not found"):
        run(argv=["no-such-program", "x"])
    with pytest.raises(FileNotFoundError, match="working directory /no/such/dir does not"):
        run(argv=["true"], cwd="/no/such/dir")


def test_a_missing_user_fails_clearly() -> None:
    with pytest.raises(LookupError, match="there is no user 'nosuchuser9' on this node"):
        run(argv=["true"], user="nosuchuser9")


def test_another_user_needs_root() -> None:
    if os.geteuid() == 0:
        result = run(argv=["sh", "-c", "id -un; echo $HOME"], user="nobody")
        assert result["stdout"].splitlines()[0] == "nobody"
    else:
        with pytest.raises(PermissionError, match="does not run as root"):
            run(argv=["true"], user="nobody")


@pytest.mark.parametrize(("args", "words"), [
    ({"argv": []}, "argument 'argv' must be a list of at least 1"),
    ({}, "argument 'argv' is missing"),
    ({"argv": "ls -l"}, "argument 'argv' must be a list"),
    ({"argv": ["true"], "timeout": 0}, "argument 'timeout' must be a duration"),
    ({"argv": ["true"], "user": "root; rm"}, "argument 'user' must be a user name"),
    ({"argv": ["true"], "cwd": "relative"}, "argument 'cwd' must be an absolute path"),
    ({"argv": ["true"], "env": {"1X": "y"}}, "argument 'env' must be an object"),
])
def test_the_schema_refuses_bad_arguments(args: dict, words: str) -> None:
    with pytest.raises(TaskError, match=words):
        catalogue.check("run", args)


def test_run_through_git_with_a_real_agent(cluster: Cluster) -> None:
    cluster.start_agent(cluster.node_config(1))
    operator = cluster.operator_config()
    done = run_cli("enqueue", NODE, "run", "--wait", "60", "--",
                   "sh", "-c", "echo hello from $0; echo oops >&2", "node1", config=operator)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "ok"
    assert outcome["result"]["stdout"] == "hello from node1\n"
    assert outcome["result"]["stderr"] == "oops\n"
    failed = run_cli("enqueue", NODE, "run", "--wait", "60", "--", "sh", "-c", "exit 7",
                     config=operator)
    assert failed.returncode == 1
    assert json.loads(failed.stdout)["result"]["exit_code"] == 7
    missing = run_cli("enqueue", NODE, "run", "--wait", "60", "--", "no-such-program",
                      config=operator)
    assert missing.returncode == 1
    assert "program 'no-such-program' not found" in json.loads(missing.stdout)["error"]
    hang = run_cli("enqueue", NODE, "run", "--arg", "timeout=1", "--wait", "60", "--",
                   "sleep", "600", config=operator)
    assert hang.returncode == 1
    outcome = json.loads(hang.stdout)
    assert outcome["status"] == "timeout" and outcome["result"]["timed_out"] is True


def test_bad_run_requests_never_leave(cluster: Cluster) -> None:
    operator = cluster.operator_config()
    empty = run_cli("enqueue", NODE, "run", config=operator)
    assert empty.returncode == 2 and "argument 'argv' is missing" in empty.stderr
    words = run_cli("enqueue", NODE, "echo", "--", "ls", config=operator)
    assert words.returncode == 2 and "only `run` takes a command" in words.stderr
    assert cluster.snapshot().listdir(f"queue/{NODE}", files=True) == []
