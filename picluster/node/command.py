"""The built-in `run` task: a command on the node.

`argv` is a list run as it is (no shell unless `shell` is true: then argv[0] is the
script for /bin/sh and the rest its $1, $2...), with an optional `timeout`, `cwd`, `env`
and `user`.  The outcome holds the exit code and the last `CAP` bytes of stdout and of
stderr, saying how many bytes there were and whether they were cut.  A non-zero exit is
an `error` outcome, a command still running at its timeout is stopped (its whole process
group: SIGTERM, then SIGKILL) and its outcome says `timeout`; either way the output is
kept.  The task is signed like every task: the signer's key is the authority, as their
ssh key would be.
"""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import threading
import time
from typing import IO, Any

from picluster.schema import Bool, Duration, List, Rule, Schema, Str
from picluster.tasks import Catalogue, TaskContext, TaskFailed, TaskTimedOut

__all__ = ["CAP", "SCHEMA", "TASK", "catalogue"]

TASK = "run"
CAP = 64 * 1024  # bytes of stdout and of stderr an outcome keeps: the last ones
_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a command past its timeout
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


class Env(Rule):
    """Environment variables: an object of names to text."""

    def describe(self) -> str:
        return "an object of environment variables, NAME: text (at most 256)"

    def accepts(self, value: Any) -> dict[str, str]:
        if not isinstance(value, dict) or len(value) > 256:
            raise ValueError
        for name, text in value.items():
            if not (Str(pattern=_NAME).accepts(name) and isinstance(text, str)):
                raise ValueError
        return value


SCHEMA = Schema({
    "argv": List(item=Str(max_length=32768), min_length=1, max_length=4096),
    "shell": Bool(default=False),
    # A day at most: a stopping agent lets a running command finish (systemd waits 10
    # minutes, then kills the agent's whole group, and the task runs again after restart).
    "timeout": Duration(minimum=0.1, maximum=86400, default=3600),
    "cwd": Str(max_length=4096, pattern=r"/.*", what="an absolute path", default=None),
    "env": Env(default={}),
    "user": Str(max_length=32, pattern=r"[a-z_][a-z0-9_-]*\$?", what="a user name",
                default=None),
})

catalogue = Catalogue()


class _Tail(threading.Thread):
    """Reads a pipe to its end, keeping the last `CAP` bytes and counting them all."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self._fd = stream.fileno()
        self.data = bytearray()
        self.total = 0

    def run(self) -> None:
        while chunk := os.read(self._fd, 65536):
            self.total += len(chunk)
            self.data += chunk
            if len(self.data) > 2 * CAP:
                del self.data[:-CAP]

    def report(self, name: str) -> dict[str, Any]:
        return {name: bytes(self.data[-CAP:]).decode("utf-8", errors="replace"),
                f"{name}_bytes": self.total, f"{name}_truncated": self.total > CAP}


def _account(user: str | None) -> pwd.struct_passwd | None:
    if user is None:
        return None
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise LookupError(f"there is no user '{user}' on this node") from None


def _stop(group: int) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after `_GRACE`."""
    for sig, wait in ((signal.SIGTERM, _GRACE), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


@catalogue.task(TASK, SCHEMA)
def run(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Run `argv`; the exit code and the tails of stdout and stderr."""
    argv = list(args["argv"])
    if not argv[0]:
        raise ValueError("argv[0] is empty: name the program to run")
    if args["shell"]:
        argv = ["/bin/sh", "-c", argv[0], "sh", *argv[1:]]
    account = _account(args["user"])
    env = {**os.environ, **args["env"]}
    identity: dict[str, Any] = {}
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
        if account.pw_uid != os.geteuid():
            identity = {"user": account.pw_uid, "group": account.pw_gid,
                        "extra_groups": os.getgrouplist(account.pw_name, account.pw_gid)}
    cwd, timeout = args["cwd"], args["timeout"]
    started = time.monotonic()
    try:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, cwd=cwd, env=env,
                                   start_new_session=True, **identity)
    except FileNotFoundError:
        if cwd is not None and not os.path.isdir(cwd):
            raise FileNotFoundError(f"working directory {cwd} does not exist") from None
        raise FileNotFoundError(f"program '{argv[0]}' not found on this node") from None
    except PermissionError as error:
        if identity and os.geteuid() != 0:
            raise PermissionError(f"cannot run as user '{args['user']}': the agent does not "
                                  "run as root") from None
        raise PermissionError(f"cannot run '{argv[0]}': {error.strerror}") from None
    assert process.stdout is not None and process.stderr is not None
    tails = {"stdout": _Tail(process.stdout), "stderr": _Tail(process.stderr)}
    for tail in tails.values():
        tail.start()
    deadline = started + timeout
    timed_out = False
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _stop(process.pid)
        process.wait()
    for tail in tails.values():
        # What the command left behind in its group may hold a pipe open: it goes at
        # the timeout too.
        tail.join(max(0.0, deadline - time.monotonic()))
        if tail.is_alive():
            timed_out = True
            _stop(process.pid)
            tail.join()
    process.stdout.close()
    process.stderr.close()
    result: dict[str, Any] = {"exit_code": process.returncode,
                              "duration_s": round(time.monotonic() - started, 3),
                              "cap_bytes": CAP, "timed_out": timed_out}
    for name, tail in tails.items():
        result |= tail.report(name)
    if timed_out:
        raise TaskTimedOut(f"timed out after {timeout:g} s: its process group was stopped",
                           result)
    if process.returncode != 0:
        raise TaskFailed(f"exit code {process.returncode}", result)
    return result
