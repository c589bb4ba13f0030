"""The `picluster` command: a thin face over the modules that do the work."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NamedTuple, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from picluster import layout
from picluster.broadcast import (
    Words,
    missing_task,
    parse_words,
    reported_tasks,
    rows,
    select,
    targets,
)
from picluster.ganglia import config_problems
from picluster.gitstore import ClusterRepo, GitError, Put, Remove, Snapshot, init_bare
from picluster.healthfile import read_health, status_fields
from picluster.identity import IdentityError, identify, writer_name
from picluster.master.desired import progress
from picluster.node import installed, reported_facts
from picluster.node.command import TASK as RUN
from picluster.node.process import become_agent, log_to_stderr
from picluster.provision import DEFAULT_MOUNT, BootError, boot, prepare_boot
from picluster.provision.wheels import DEFAULT_ARCH, DEFAULT_PYTHON, WHEELS_DIR
from picluster.queue import enqueue, make_task, pending_tasks, read_signers, wait_for
from picluster.registry import (
    Membership,
    read_cluster_vars,
    read_membership,
    register,
    verify_registrations,
)
from picluster.results import STATUSES, locate, tasks
from picluster.revoke import Revocation, revoke_ops
from picluster.schedules import (
    MIN_EVERY,
    Schedule,
    last_run,
    next_run,
    read_schedules,
    schedule_ops,
)
from picluster.settings import ConfigError, Settings
from picluster.signing import SignatureError, public_key_of, signer_line
from picluster.succession import successors
from picluster.tasks import MAX_SECONDS, Outcome, TaskError, now_iso
from picluster.timespec import iso, parse_duration, parse_moment
from picluster.trust import Trust, TrustError
from picluster.version import __version__

__all__ = ["app", "main"]

app = typer.Typer(help="A self-configuring Raspberry Pi Beowulf cluster; its state is a git "
                       "repository.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)
log = logging.getLogger("picluster")

# Exit codes: 0 ok, 1 failed (a task error, git refused), 2 bad input, 3 timed out.
EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 3

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    # Plain print: one line, never wrapped, whatever the terminal.
    print(f"picluster: {message}", file=sys.stderr)
    raise typer.Exit(code)


def settings(ctx: typer.Context) -> Settings:
    """The boot config named by --config / $PICLUSTER_CONFIG, loaded on first use."""
    if ctx.obj.get("settings") is None:
        try:
            ctx.obj["settings"] = Settings.load(ctx.obj["config"])
        except ConfigError as error:
            fail(str(error), EXIT_USAGE)
        logging.getLogger().setLevel(
            logging.DEBUG if ctx.obj["verbose"] else ctx.obj["settings"].log_level.upper())
    return ctx.obj["settings"]


def open_repo(ctx: typer.Context) -> ClusterRepo:
    conf = settings(ctx)
    return ClusterRepo.from_settings(conf, writer_name(conf))


def print_json(data: Any) -> None:
    out.out(json.dumps(data, indent=2, default=str), highlight=False)


def _print_version(wanted: bool) -> None:
    if wanted:
        out.print(__version__)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", envvar="PICLUSTER_CONFIG",
        help="Boot config to read (default: /boot/firmware/picluster.conf, else "
             "/boot/picluster.conf).")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version.", is_eager=True,
        callback=_print_version)] = False,
) -> None:
    ctx.obj = {"config": config, "verbose": verbose, "settings": None}
    log_to_stderr(verbose)


@app.command("init-repo")
def init_repo_command(
    path: Annotated[Path, typer.Argument(help="Where to create the bare repository.")],
    signer: Annotated[Path | None, typer.Option(
        help="An OpenSSH public key file to trust as the operator: it signs tasks and "
             "changes to allowed_signers.")] = None,
    name: Annotated[str, typer.Option(help="The signer's name.")] = "operator",
) -> None:
    """Create a bare cluster repository: ip/, queue/, local-vars/, a README; no master yet.

    Nodes trust the signer from their card (prepare-boot --signer), else as they find
    it at their first clone.
    """
    files = layout.seed_files()
    if signer is not None:
        try:
            files[layout.ALLOWED_SIGNERS] += signer_line(signer.read_text(), name,
                                                         admin=True) + "\n"
        except (OSError, SignatureError) as error:
            fail(f"{signer}: {getattr(error, 'strerror', None) or error}", EXIT_USAGE)
    try:
        init_bare(path, files, "init cluster repository")
    except GitError as error:
        fail(str(error), EXIT_USAGE)
    out.print(f"created cluster repository {path}" + (f", trusting {name}" if signer else ""))


@app.command("register")
def register_command(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Write ip/<mac> with this node's IPv4, claim `master` if nobody holds it, push.

    Nothing is committed when nothing changed.
    """
    conf = settings(ctx)
    try:
        node = identify(conf)
        result = register(ClusterRepo.from_settings(conf, node.mac), node, reported_facts(conf),
                          designated=conf.master, key=conf.ssh_key)
    except (IdentityError, SignatureError) as error:
        fail(str(error), EXIT_USAGE)
    except GitError as error:
        fail(str(error))
    if as_json:
        print_json(result.as_dict())
        return
    role = "master" if result.is_master else f"node (master: {result.master})"
    what = "registered" if result.commit else "already registered"
    out.print(f"{what} {result.mac} at {result.ip} as {role}", highlight=False)


def _parse_args(pairs: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--arg '{pair}' is not key=value", EXIT_USAGE)
        try:
            args[key] = json.loads(value)  # numbers, booleans, lists...
        except json.JSONDecodeError:
            args[key] = value  # ...and anything else is a string
    return args


def _task_request(words: list[str], arg: list[str] | None) -> tuple[Words, dict[str, Any]]:
    """The nodes, task and arguments the words and --arg options name (a `run` task's
    command as its argv); ValueError for what cannot be sent."""
    request = parse_words(words)
    args = _parse_args(arg or [])
    if request.rest:
        if request.task != RUN:
            raise ValueError(f"only `{RUN}` takes a command after its name; give task "
                             f"'{request.task}' its arguments with --arg key=value")
        args["argv"] = list(request.rest)
    return request, args


@app.command("enqueue")
def enqueue_command(
    ctx: typer.Context,
    words: Annotated[list[str], typer.Argument(
        metavar="[MAC...] TASK [-- CMD ARG...]",
        help="The nodes (none with --all or --role), the task, e.g. echo, and for `run` "
             "the command after --.")],
    every: Annotated[bool, typer.Option(
        "--all", help="One task for every registered node.")] = False,
    role: Annotated[str | None, typer.Option(
        help="One task for the master (master) or for every other node (node).")] = None,
    arg: Annotated[list[str] | None, typer.Option(
        "--arg", help="key=value argument (value parsed as JSON when it is JSON); repeat.")]
    = None,
    wait: Annotated[float | None, typer.Option(
        help="Wait this many seconds for the outcomes and print them.")] = None,
    delay: Annotated[str | None, typer.Option(
        "--in", help="Run it this much later, e.g. 30s, 5m, 2h (an eta).")] = None,
    at: Annotated[str | None, typer.Option(
        help="Run it at this time, ISO 8601, e.g. 2026-11-25T03:00 (local) (an eta).")]
    = None,
    expires: Annotated[str | None, typer.Option(
        help="Never run it after this: a duration from now (e.g. 1h) or a time.")] = None,
    timeout: Annotated[str | None, typer.Option(
        help="Stop it after this long, e.g. 30s; its outcome then says timeout.")] = None,
    retries: Annotated[int, typer.Option(min=0, help="Retries after a failure.")] = 0,
    retry_delay: Annotated[str | None, typer.Option(
        help="Wait this long before the first retry, twice as long before each next.")]
    = None,
    as_json: JsonOption = False,
) -> None:
    """Sign a task for each node named and commit them all to queue/<mac>/ in one commit;
    with --wait, print the outcome (one node) or a table with a row per node.

    Exit code with --wait: 0 every task ok, 1 one failed or was rejected, 3 no outcome in
    time; 2 bad input, such as arguments the task's schema refuses or a node that does
    not run the task.
    """
    conf = settings(ctx)
    if conf.signing_key is None:
        fail(f"{conf.source}: key 'signing_key' is not set; point it at the private key "
             "whose public half is trusted (`picluster trust`)", EXIT_USAGE)
    try:
        request, args = _task_request(words, arg)
        when = _timing(delay, at, expires, timeout, retry_delay)
        if when.timeout is not None and request.task == RUN:
            # `run` stops its command, process group and all, at its own timeout.
            args.setdefault("timeout", when.timeout)
            when = when._replace(timeout=None)
        # Arguments the task's schema refuses never leave, when this side knows the task.
        catalogue = installed().catalogue
        known = request.task in catalogue.names()
        if known:
            catalogue.check(request.task, args)
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    repo = open_repo(ctx)
    try:
        membership, _ = _registrations(conf, repo.sync())
    except GitError as error:
        fail(str(error))
    try:
        macs = select(membership, targets(every=every, role=role, macs=request.macs))
        # Nor a task that a node it goes to does not report it runs, ...
        problems = missing_task(membership, macs, request.task)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ValueError(problems[0] + more)
        # ... nor one that neither this side nor any of them knows.
        if not known and all(reported_tasks(membership, mac) is None for mac in macs):
            catalogue.check(request.task, args)
        jobs = [replace(make_task(mac, request.task, args, conf.signer, eta=when.eta,
                                  expires=when.expires, retries=retries),
                        timeout=when.timeout, retry_delay=when.retry_delay) for mac in macs]
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    try:
        jobs = enqueue(repo, jobs, conf.signing_key)
    except SignatureError as error:
        fail(str(error), EXIT_USAGE)
    except GitError as error:
        fail(str(error))
    single = len(jobs) == 1 and not (every or role)
    if wait is None:
        if as_json:
            listed = [{"id": j.id, "node": j.node, "task": j.task} for j in jobs]
            print_json(listed[0] if single else listed)
        else:
            for job in jobs:
                out.print(job.id if single else f"{job.node} {job.id}", highlight=False)
        return
    try:
        outcomes = wait_for(repo, jobs, wait)
    except GitError as error:
        fail(f"{len(jobs)} tasks are queued, but waiting for their outcomes failed: {error}")
    except TaskError as error:
        fail(f"{'task ' + jobs[0].id if single else 'a task'} has no readable outcome: {error}")
    if single:
        outcome = outcomes.get(jobs[0].id)
        if outcome is None:
            fail(f"no outcome for task {jobs[0].id} within {wait:g} s; it stays queued",
                 EXIT_TIMEOUT)
        print_json(json.loads(outcome.to_json()))
        raise typer.Exit(0 if outcome.status == "ok" else EXIT_FAILED)
    table = rows(jobs, outcomes, membership)
    if as_json:
        print_json(table)
    else:
        _print_rows(table)
    statuses = {row["status"] for row in table}
    raise typer.Exit(0 if statuses == {"ok"} else
                     EXIT_TIMEOUT if statuses <= {"ok", "pending"} else EXIT_FAILED)


class _Timing(NamedTuple):
    eta: str | None
    expires: str | None
    timeout: float | None
    retry_delay: float | None


def _timing(delay: str | None, at: str | None, expires: str | None, timeout: str | None,
            retry_delay: str | None) -> _Timing:
    """The timing options of `enqueue` as task fields; ValueError names a bad one."""
    now = dt.datetime.now(dt.UTC)
    if delay is not None and at is not None:
        raise ValueError("give --in or --at, not both")
    eta = now + dt.timedelta(seconds=parse_duration(delay)) if delay is not None else \
        parse_moment(at) if at is not None else None
    until = None
    if expires is not None:
        try:
            until = now + dt.timedelta(seconds=parse_duration(expires))
        except ValueError:
            until = parse_moment(expires)
        if until <= (eta or now):
            raise ValueError(f"--expires {expires} comes before the task may run")
    seconds = {}
    for option, text in (("--timeout", timeout), ("--retry-delay", retry_delay)):
        seconds[option] = parse_duration(text) if text is not None else None
        if (seconds[option] or 0) > MAX_SECONDS:
            raise ValueError(f"{option} {text}: at most {MAX_SECONDS:g} seconds (a day)")
    return _Timing(iso(eta) if eta else None, iso(until) if until else None,
                   seconds["--timeout"], seconds["--retry-delay"])


_STATUS_STYLE = {"ok": "green", "pending": "dim", "error": "red", "timeout": "red",
                 "rejected": "red", "revoked": "yellow"}


def _summary(row: dict[str, Any], width: int = 80) -> str:
    """A row's result or error on one line: a command's output, else compact JSON."""
    result = row["result"]
    if row["error"] and not (isinstance(result, dict) and result.get("stdout", "").strip()):
        text = row["error"]
    elif isinstance(result, dict) and "stdout" in result:
        text = result["stdout"].strip() or result.get("stderr", "").strip()
    else:
        text = json.dumps(result, ensure_ascii=False) if result is not None else ""
    text = " ⏎ ".join(text.splitlines())
    return text if len(text) <= width else text[:width - 1] + "…"


def _print_rows(table: list[dict[str, Any]]) -> None:
    """Outcomes, one row per node."""
    view = Table()
    for column in ("node", "hostname", "status", "seconds", "result or error"):
        view.add_column(column)
    for row in table:
        seconds = "" if row["duration_s"] is None else f"{row['duration_s']:.2f}"
        view.add_row(layout.format_mac(row["node"]), row["hostname"] or "",
                     Text(row["status"], style=_STATUS_STYLE.get(row["status"], "")), seconds,
                     Text(_summary(row)))
    out.print(view)
    done = sum(row["status"] == "ok" for row in table)
    out.print(f"{done} of {len(table)} ok", highlight=False)


@app.command("revoke")
def revoke_command(
    ctx: typer.Context,
    ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Task ids to revoke.")],
    wait: Annotated[float | None, typer.Option(
        help="Wait this many seconds for the nodes to acknowledge.")] = None,
) -> None:
    """Revoke pending tasks: a signed revocation beside each; its node never runs it and
    its outcome says revoked (a task that already started runs to its end).

    Exit code: 0 all revoked, 1 one had finished already (or, with --wait, was not
    acknowledged as revoked), 2 an id no queue holds, 3 no acknowledgement in time.
    """
    conf = settings(ctx)
    if conf.signing_key is None:
        fail(f"{conf.source}: key 'signing_key' is not set; revocations are signed like "
             "tasks", EXIT_USAGE)
    repo = open_repo(ctx)
    try:
        snapshot = repo.sync()
    except GitError as error:
        fail(str(error))
    wanted: list[Revocation] = []
    codes: set[int] = set()
    for task_id in dict.fromkeys(ids):
        found = locate(snapshot, task_id) if layout.valid_task_id(task_id) else []
        if not found:
            print(f"picluster: no task {task_id} in any queue (a mistyped id, or its outcome "
                  "expired)", file=sys.stderr)
            codes.add(EXIT_USAGE)
        for where in found:
            if where.outcome is not None and where.outcome.status == "revoked":
                out.print(f"{task_id}: revoked already (node {where.node})", highlight=False)
            elif where.outcome is not None:
                print(f"picluster: task {task_id} already finished on {where.node} "
                      f"({where.outcome.status}); nothing to revoke", file=sys.stderr)
                codes.add(EXIT_FAILED)
            elif where.revoked:
                out.print(f"{task_id}: revoked already; {where.node} has not acknowledged "
                          "it yet", highlight=False)
            else:
                wanted.append(Revocation(task_id, where.node, now_iso(), conf.signer))
    if wanted:
        try:
            repo.transact(revoke_ops(wanted, conf.signing_key),
                          f"revoke {len(wanted)} tasks: {', '.join(r.id for r in wanted)}")
        except SignatureError as error:
            fail(str(error), EXIT_USAGE)
        except GitError as error:
            fail(str(error))
    for revocation in wanted:
        out.print(f"{revocation.id}: revoked (node {revocation.node})", highlight=False)
    if wait is not None and wanted:
        try:
            outcomes = wait_for(repo, wanted, wait)  # type: ignore[arg-type]
        except GitError as error:
            fail(f"revoked, but waiting for the nodes failed: {error}")
        for revocation in wanted:
            outcome = outcomes.get(revocation.id)
            if outcome is None:
                print(f"picluster: node {revocation.node} did not acknowledge revoking "
                      f"{revocation.id} within {wait:g} s", file=sys.stderr)
                codes.add(EXIT_TIMEOUT)
            elif outcome.status != "revoked":
                print(f"picluster: task {revocation.id} ran before its node saw the "
                      f"revocation ({outcome.status})", file=sys.stderr)
                codes.add(EXIT_FAILED)
    raise typer.Exit(next((c for c in (EXIT_USAGE, EXIT_FAILED, EXIT_TIMEOUT) if c in codes), 0))


@app.command("result")
def result_command(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(metavar="ID", help="The task's id.")],
    as_json: JsonOption = False,
) -> None:
    """A task's outcome, by id, from the repository.

    Exit code: 0 ok, 1 failed (error, timeout, rejected, revoked), 2 no such task (or its
    outcome expired), 3 still pending.
    """
    conf = settings(ctx)
    try:
        snapshot = open_repo(ctx).sync()
    except GitError as error:
        fail(str(error))
    found = locate(snapshot, task_id) if layout.valid_task_id(task_id) else []
    if not found:
        fail(f"no task {task_id} in any queue (a mistyped id, or its outcome expired: "
             f"outcomes are kept {conf.keep_outcomes / 86400:g} days by default)", EXIT_USAGE)
    where = next((w for w in found if w.outcome is not None), found[0])
    if where.outcome is None:
        if as_json:
            print_json({"id": task_id, "node": where.node, "status": "pending"})
        else:
            out.print(f"{task_id}: pending on {where.node}"
                      + (" (revoked; its node has not acknowledged it yet)" if where.revoked
                         else ""), highlight=False)
        raise typer.Exit(EXIT_TIMEOUT)
    outcome = where.outcome
    if as_json:
        print_json(json.loads(outcome.to_json()))
    else:
        _print_outcome(outcome)
    raise typer.Exit(0 if outcome.status == "ok" else EXIT_FAILED)


def _print_outcome(outcome: Outcome) -> None:
    """An outcome for a person: what ran where, how it went, then its result (a
    command's output as it was) or its error."""
    facts = [("task", f"{outcome.task} {outcome.id}"), ("node", outcome.node),
             ("status", outcome.status), ("producer", outcome.producer),
             ("attempts", outcome.attempts or None), ("started", outcome.started_at),
             ("finished", outcome.finished_at), ("error", outcome.error)]
    for name, value in facts:
        if value is not None:
            out.print(f"{name + ':':10} {value}", highlight=False, soft_wrap=True)
    result = outcome.result
    if isinstance(result, dict) and {"stdout", "stderr", "exit_code"} <= result.keys():
        out.print(f"{'exit code:':10} {result['exit_code']}", highlight=False)
        for stream in ("stdout", "stderr"):
            if result[stream]:
                cut = f" (the last {result['cap_bytes']} of {result[stream + '_bytes']} " \
                      "bytes)" if result.get(f"{stream}_truncated") else ""
                out.print(f"--- {stream}{cut}", highlight=False)
                out.out(result[stream], end="" if result[stream].endswith("\n") else "\n",
                        highlight=False)
    elif result is not None:
        out.print("result:", highlight=False)
        print_json(result)


@app.command("tasks")
def tasks_command(
    ctx: typer.Context,
    node: Annotated[list[str] | None, typer.Option(
        help="Only this node's tasks (a MAC); repeat for several.")] = None,
    status: Annotated[list[str] | None, typer.Option(
        help=f"Only tasks with this status: {', '.join(STATUSES)}; repeat for several.")]
    = None,
    since: Annotated[str | None, typer.Option(
        help="Only tasks made since: a duration ago (e.g. 1h, 2d) or a time.")] = None,
    limit: Annotated[int, typer.Option(
        min=0, help="Show the newest this many (0: all).")] = 50,
    as_json: JsonOption = False,
) -> None:
    """The tasks in the queues (pending, and the outcomes the repository keeps), oldest
    first."""
    try:
        macs = [layout.normalize_mac(mac) for mac in node or []]
        wanted = set(status or [])
        if wanted - set(STATUSES):
            raise ValueError(f"--status {', '.join(sorted(wanted - set(STATUSES)))}: use "
                             f"{', '.join(STATUSES)}")
        start = None
        if since is not None:
            try:
                start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=parse_duration(since))
            except ValueError:
                start = parse_moment(since)
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    try:
        snapshot = open_repo(ctx).sync()
    except GitError as error:
        fail(str(error))
    listed = tasks(snapshot, nodes=macs, statuses=wanted, since=start, limit=limit)
    if as_json:
        print_json(listed)
        return
    table = Table(title=f"{len(listed)} tasks")
    for column in ("id", "node", "task", "status", "finished", "error"):
        table.add_column(column, no_wrap=column in ("id", "node", "status"))
    for row in listed:
        table.add_row(row["id"], row["node"], row["task"] or "",
                      Text(row["status"], style=_STATUS_STYLE.get(row["status"], "")),
                      row["finished_at"] or "", Text((row["error"] or "")[:60]))
    out.print(table)


@app.command("trust")
def trust_command(
    ctx: typer.Context,
    pubkey: Annotated[str | None, typer.Argument(
        help="OpenSSH public key, or a .pub file.")] = None,
    name: Annotated[str, typer.Option(help="The signer's name (tasks name it as producer).")]
    = "operator",
    admin: Annotated[bool, typer.Option(
        "--admin", help="Let the key sign changes to allowed_signers too (an operator's "
                        "key; never the cluster key, which every card holds).")] = False,
    sign_as_is: Annotated[bool, typer.Option(
        "--sign", help="Instead of adding a key, sign local-vars/allowed_signers as it is "
                       "in the repository (after editing it by hand).")] = False,
) -> None:
    """Allow the holder of PUBKEY to sign tasks (adds it to local-vars/allowed_signers).

    Signs the new file with signing_key, which must be an --admin signer the nodes trust.
    """
    conf = settings(ctx)
    if conf.signing_key is None:
        fail(f"{conf.source}: key 'signing_key' is not set; `trust` signs allowed_signers "
             "with it (nodes ignore a change no signer they trust signed)", EXIT_USAGE)
    key, trust = conf.signing_key, Trust(conf)
    if sign_as_is == (pubkey is not None):
        fail("give either PUBKEY (to add a key) or --sign (to sign the file as it is)",
             EXIT_USAGE)
    if pubkey is None:
        def change(tip: Snapshot) -> list[Put]:
            return trust.endorse(tip, key)

        message = f"sign {layout.ALLOWED_SIGNERS} as it is"
        subject, state = layout.ALLOWED_SIGNERS, f"signed as it is, with {key}"
    else:
        text = Path(pubkey).read_text() if Path(pubkey).is_file() else pubkey
        try:
            line = signer_line(text.strip(), name, admin=admin)
        except SignatureError as error:
            fail(f"{pubkey}: {error}", EXIT_USAGE)

        def change(tip: Snapshot) -> list[Put]:
            return trust.add(tip, line, key)

        message = f"trust {'admin' if admin else 'task'} signer {name}"
        subject = name
        state = "a trusted task signer" + (", and may change allowed_signers" if admin else "")
    try:
        result = open_repo(ctx).transact(change, message)
    except (SignatureError, TrustError) as error:
        fail(str(error), EXIT_USAGE)
    except GitError as error:
        fail(str(error))
    out.print(f"{subject} {'is now' if result.commit else 'was already'} {state}",
              highlight=False)


def _registrations(conf: Settings, snapshot: Snapshot) -> tuple[Membership, list[str]]:
    """The membership the master acts on (registrations the cluster key signed), and the
    problems of the others; without the cluster key, all of it, with that problem."""
    membership = read_membership(snapshot)
    if conf.ssh_key is None:
        return membership, [f"registrations are not verified: {conf.source} sets no ssh_key "
                            "(the cluster key nodes sign their registration with)"]
    try:
        verified, refused = verify_registrations(snapshot, membership,
                                                 public_key_of(conf.ssh_key))
    except SignatureError as error:
        return membership, [f"registrations are not verified: ssh_key: {error}"]
    return verified, list(refused.values())


def _last_seen(repo: ClusterRepo, mac: str) -> str | None:
    """When the node last reached the repository, if known: the newest commit of an
    outcome it pushed or of a change of its facts."""
    dates = [entry["date"] for path in (f"{layout.queue_dir(mac)}/done", layout.facts_path(mac))
             for entry in repo.log(path, limit=1)]
    return max(dates, key=datetime.fromisoformat, default=None)


def _playbooks_cell(playbooks: dict[str, dict[str, Any]]) -> Text:
    applied = [p for p in playbooks.values() if p["state"] == "applied"]
    failed = [name for name, p in playbooks.items() if p["state"] == "failed"]
    text = Text(f"{len(applied)}/{len(playbooks)} applied"
                + (" (check mode)" if any(p.get("check") for p in applied) else ""),
                style="green" if len(applied) == len(playbooks) else "yellow")
    if failed:
        text.append(f", failed: {', '.join(failed)}", style="red")
    return text


@app.command("status")
def status_command(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The cluster as the repository sees it: nodes, roles, pending tasks, whether each
    node is configured (its role's playbooks applied, in check mode where it cannot change
    its own system, pending or failed, and the version of its cluster files), and when the
    master last saw each node (by the master's clock).

    Registrations not signed with the cluster key (ssh_key) are problems, not nodes.
    """
    conf = settings(ctx)
    repo = open_repo(ctx)
    try:
        snapshot = repo.sync()
    except GitError as error:
        fail(str(error))
    membership, refused = _registrations(conf, snapshot)
    ignored = Trust(conf).judge(snapshot).problem  # a change of allowed_signers
    health, unhealthy = read_health(snapshot)
    cluster = read_cluster_vars(snapshot)
    configured = progress(membership, cluster)
    nodes = [{"mac": m.mac, "ip": m.ip, "hostname": m.hostname,
              "role": "master" if m.mac == membership.master else "node", "cores": m.cores,
              "pending": len(pending_tasks(snapshot, m.mac)),
              **configured.get(m.mac, {"playbooks": {}, "cluster_files": {},
                                       "configured": False}),
              "last_seen": _last_seen(repo, m.mac),
              **status_fields(health, m.mac)}
             for m in membership.members]
    # Everything in the repository that a person should fix, each with its fix.
    problems = [*membership.problems, *refused, *cluster.problems, *config_problems(cluster),
                *read_signers(snapshot).problems, *([ignored] if ignored else []),
                *([unhealthy] if unhealthy else [])]
    # Times another node wrote are shown as written, by whose clock, never against ours.
    recorded = {"written_by": health.master, "written_at_master_clock": health.written_at} \
        if health else None
    if as_json:
        print_json({"master": membership.master, "successors": successors(membership),
                    "health": recorded, "nodes": nodes, "problems": problems})
        return
    table = Table(title=f"picluster: {len(nodes)} nodes", caption=(
        f"health: as master {layout.format_mac(health.master)} recorded it at "
        f"{health.written_at}, by its clock" if health else "health: not recorded yet"))
    for column in ("MAC", "IP", "hostname", "role", "cores", "pending tasks", "playbooks",
                   "cluster files", "health"):
        table.add_column(column, no_wrap=column in ("MAC", "IP"))
    for node in nodes:
        files = node["cluster_files"].get("version") or "none"
        if node["cluster_files"].get("state") != "current":
            files += " (pending)"
        table.add_row(layout.format_mac(str(node["mac"])), str(node["ip"]),
                      str(node["hostname"]), str(node["role"]), str(node["cores"]),
                      str(node["pending"]), _playbooks_cell(node["playbooks"]), files,
                      _health_cell(node))
    out.print(table)
    for node in nodes:
        for name, playbook in node["playbooks"].items():
            if playbook["state"] == "failed":
                # Text, not markup: a message may hold brackets.
                err.print(Text(f"{node['hostname']}: {name} failed at "
                               f"'{playbook['task']}': {playbook['message']}", style="red"))
    for problem in problems:
        err.print(f"[yellow]problem:[/] {problem}", highlight=False)


def _health_cell(node: dict[str, Any]) -> str:
    """The node's state, and how long before the record the master last saw it (both
    times by the master's clock)."""
    if node["state"] is None:
        return "-"
    before = node["seen_before_written_s"]
    return node["state"] + (f", {node['missed']} missed" if node["missed"] else "") + (
        f", seen {before:g} s before" if before else "")


_HOST_STYLE = {"ok": "green", "changed": "yellow", "skipped": "dim", "failed": "red",
               "unreachable": "red"}


@app.command("apply")
def apply_command(
    ctx: typer.Context,
    playbook: Annotated[str, typer.Argument(
        help="A playbook picluster ships (core, sudoers, openmpi, nfs-server, nfs-client, "
             "ganglia, or site for all of them), or a path to one of your own.")],
    limit: Annotated[str | None, typer.Option(
        help="Only these hosts: an Ansible pattern, e.g. nodes or 198.18.0.12.")] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Change nothing; report what would change.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Run a playbook from the master against the inventory its agent renders.

    Exit code: 0 every host ok or changed,
    1 a host failed or was unreachable (or no host ran),
    2 bad input: an unknown playbook, or no rendered inventory.
    """
    from picluster.apply import PlaybookError, apply, resolve

    conf = settings(ctx)
    try:
        run = apply(conf, playbook, limit=limit, check=check)
    except PlaybookError as error:
        fail(str(error), EXIT_USAGE)
    succeeded = bool(run.hosts) and run.ok and run.rc == 0
    if as_json:
        print_json({"playbook": str(resolve(playbook)), "check": check, "ok": succeeded,
                    **run.as_dict()})
    else:
        table = Table()
        for column in ("host", "result", "message"):
            table.add_column(column)
        for host in run.hosts.values():
            # Text, not markup: an error message may hold brackets.
            table.add_row(host.host, Text(host.status, style=_HOST_STYLE[host.status]),
                          Text(host.message))
        out.print(table)
        out.print(f"{playbook}{' (check mode)' if check else ''}: {len(run.hosts)} hosts in "
                  f"{run.seconds:.1f} s", highlight=False)
    if not run.hosts:
        fail(f"no host ran the playbook (ansible-playbook exit {run.rc}); its output is "
             f"under {conf.ansible_dir / 'playbook' / 'artifacts'}")
    raise typer.Exit(0 if succeeded else EXIT_FAILED)


@app.command("agent")
def agent_command(ctx: typer.Context) -> None:
    """Run the node service: poll git, run this node's tasks, push their outcomes.

    SIGINT stops gracefully (running tasks finish, outcomes are pushed); SIGTERM at once.
    """
    # In a process of its own (the same pid): none of this command line's libraries stay
    # in the agent's memory.
    become_agent(settings(ctx))


@app.command("prepare-boot")
def prepare_boot_command(
    boot_dir: Annotated[Path, typer.Argument(
        help="The SD card's boot partition, mounted (e.g. /media/$USER/bootfs).")],
    repo: Annotated[str, typer.Option(help="The cluster repository's git URL.")],
    key: Annotated[Path, typer.Option(
        help="The cluster's ssh private key (no passphrase); copied to the card.")],
    master: Annotated[bool, typer.Option(
        "--master", help="Designate this node as the master.")] = False,
    hostname: Annotated[str | None, typer.Option(help="The node's hostname, e.g. pi-1.")]
    = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Write to a directory that does not look like a boot partition, "
                        "and replace an existing picluster.conf.")] = False,
    mount: Annotated[str, typer.Option(
        help="Where the node mounts this partition: /boot/firmware (Bookworm and later), "
             "/boot (older); for the first-boot hook of images without cloud-init.")]
    = DEFAULT_MOUNT,
    wheel: Annotated[Path | None, typer.Option(
        help="The picluster wheel the node installs (default: built from this picluster's "
             "source).")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Also put the wheels of picluster's dependencies on the card, "
                          "downloaded now for --platform: first boot needs no package "
                          "index.")] = False,
    wheelhouse: Annotated[Path | None, typer.Option(
        help="Like --offline, with the dependencies' wheels from this directory.")] = None,
    platform: Annotated[str, typer.Option(
        help="The node's machine, for --offline: aarch64 (64-bit Raspberry Pi OS), "
             "x86_64, ...")] = DEFAULT_ARCH,
    python_version: Annotated[str, typer.Option(
        help="The node's Python, for --offline.")] = DEFAULT_PYTHON,
    package: Annotated[str | None, typer.Option(
        help="Opt-in instead of the wheel: a requirement the node pip-installs from the "
             "package index by name, e.g. 'picluster==1.0' or git+https://...  "
             "(trusts the index: the name 'picluster' there is another project).")]
    = None,
    signer: Annotated[Path | None, typer.Option(
        help="The operator's OpenSSH public key file: the node trusts it from its first "
             "boot, whatever the repository says (its trust anchor).")] = None,
    signer_name: Annotated[str, typer.Option(
        help="The signer's name in the anchor, as in allowed_signers.")] = "operator",
) -> None:
    """Make an SD card's boot partition boot a node of the cluster (never `dd`s).

    Writes picluster.conf, the cluster key, with --signer the trust anchor, the `ssh`
    file, picluster's wheel with its sha256 (picluster-wheels/), and the first-boot hooks
    that check and install it and run `picluster boot`: cloud-init's user-data, and on
    images without cloud-init picluster-firstrun.sh through cmdline.txt.
    """
    try:
        done = prepare_boot(boot_dir, repo=repo, key=key, master=master, hostname=hostname,
                            force=force, mount=mount, package=package, wheel=wheel,
                            wheelhouse=wheelhouse, offline=offline, arch=platform,
                            python_version=python_version, signer=signer,
                            signer_name=signer_name)
    except BootError as error:
        fail(str(error), error.code)
    role = "the master" if master else "a node"
    installs = (f"{done.wheel}" + (f" and {done.dependencies} dependencies' wheels"
                                   if done.dependencies else "") if done.wheel
                else f"{package} from the package index")
    written = [name for name in done.written if not name.startswith(f"{WHEELS_DIR}/")]
    if done.wheel:
        written.append(f"{WHEELS_DIR}/")
    out.print(f"prepared {boot_dir} to boot {role}{f' named {hostname}' if hostname else ''}"
              f", installing {installs} (first boot through {' or '.join(done.hooks)}); "
              f"wrote {', '.join(written)}", highlight=False, soft_wrap=True)


@app.command("boot")
def boot_command(
    ctx: typer.Context,
    foreground: Annotated[bool, typer.Option(
        "--foreground", help="Become the agent even where systemd runs (what "
                             "picluster.service runs).")] = False,
    timeout: Annotated[float | None, typer.Option(
        help="Give up joining the cluster after this many seconds (default: never).")]
    = None,
) -> None:
    """Bring this node up: install the cluster key, set the hostname, join the cluster;
    then enable picluster.service where systemd runs, else become the agent.

    Idempotent: run at first boot, and at every start of picluster.service.
    """
    conf = settings(ctx)
    try:
        boot(conf, foreground=foreground, timeout=timeout)
    except BootError as error:
        fail(str(error), error.code)
    except IdentityError as error:
        fail(str(error), EXIT_USAGE)


@app.command("mpirun", context_settings={"ignore_unknown_options": True,
                                         "allow_extra_args": True})
def mpirun_command(
    ctx: typer.Context,
    args: Annotated[list[str] | None, typer.Argument(
        help="mpirun's own arguments, e.g. -np 8 python3 hello.py.")] = None,
) -> None:
    """Run OpenMPI's mpirun over the cluster's hostfile, from any node; exit with its code.

    As the cluster's user (root is allowed with OpenMPI's two flags), with every node's
    host key checked against the keys nodes registered.  On the master the hostfile is the
    one it renders; elsewhere the one it committed to the cluster repository.
    """
    from picluster.mpi import MpiError, mpirun

    conf = settings(ctx)
    try:
        code = mpirun(conf, [*(args or []), *ctx.args])
    except MpiError as error:
        fail(str(error))
    raise typer.Exit(code)


schedule_app = typer.Typer(help="Signed schedules: the master enqueues their tasks on a cron "
                                "or interval trigger.", no_args_is_help=True)
app.add_typer(schedule_app, name="schedule")


@schedule_app.command("add")
def schedule_add_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The schedule's name, e.g. nightly-backup.")],
    words: Annotated[list[str], typer.Argument(
        metavar="[MAC...] TASK [-- CMD ARG...]",
        help="The nodes (none with --all or --role), the task, and for `run` the command "
             "after --.")],
    cron: Annotated[str | None, typer.Option(
        help="A crontab line in UTC: minute hour day month weekday, e.g. '0 3 * * *'.")]
    = None,
    every: Annotated[str | None, typer.Option(help="A period, e.g. 10m, 1h, 1d.")] = None,
    all_nodes: Annotated[bool, typer.Option(
        "--all", help="Every node registered at each run.")] = False,
    role: Annotated[str | None, typer.Option(
        help="The master (master) or every other node (node), at each run.")] = None,
    arg: Annotated[list[str] | None, typer.Option(
        "--arg", help="key=value argument (value parsed as JSON when it is JSON); repeat.")]
    = None,
    replace_existing: Annotated[bool, typer.Option(
        "--replace", help="Replace a schedule of that name.")] = False,
) -> None:
    """Sign a schedule into local-vars/schedules/NAME.json: the master enqueues TASK for
    the nodes named at each time the trigger gives (runs missed while no master was up
    are one run).  Exit 2: bad input, such as a crontab line that is not one."""
    conf = settings(ctx)
    if conf.signing_key is None:
        fail(f"{conf.source}: key 'signing_key' is not set; schedules are signed like tasks",
             EXIT_USAGE)
    try:
        if (cron is None) == (every is None):
            raise ValueError("give the schedule either --cron or --every")
        period = parse_duration(every) if every is not None else None
        if period is not None and period < MIN_EVERY:
            raise ValueError(f"--every {every}: at least {MIN_EVERY:g} s")
        request, args = _task_request(words, arg)
        chosen = targets(every=all_nodes, role=role, macs=request.macs)
        schedule = Schedule(name, request.task, args, chosen, cron, period, now_iso(),
                            conf.signer).check()
        catalogue = installed().catalogue
        if request.task in catalogue.names():
            catalogue.check(request.task, args)
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    repo = open_repo(ctx)
    try:
        membership = read_membership(repo.sync())
        if request.task not in catalogue.names() and not any(
                request.task in (reported_tasks(membership, m.mac) or {})
                for m in membership.members):
            fail(f"unknown task '{request.task}': neither this side nor any node reports it",
                 EXIT_USAGE)
        result = repo.transact(schedule_ops(schedule, conf.signing_key,
                                            replace_existing=replace_existing),
                               f"schedule {name}: {request.task} {schedule.describe()}")
    except SignatureError as error:
        fail(str(error), EXIT_USAGE)
    except GitError as error:
        fail(str(error))
    if result.commit is None:
        fail(f"schedule {name} exists; `picluster schedule remove {name}` first, or add "
             "--replace", EXIT_USAGE)
    out.print(f"schedule {name}: {request.task} {schedule.describe()} for "
              f"{chosen if isinstance(chosen, str) else ', '.join(chosen)}", highlight=False)


@schedule_app.command("list")
def schedule_list_command(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """The schedules in the repository: trigger, task, nodes, last and next run."""
    try:
        snapshot = open_repo(ctx).sync()
    except GitError as error:
        fail(str(error))
    # Judged by the signers the repository lists; each master judges by those it trusts.
    found, problems = read_schedules(snapshot, read_signers(snapshot))
    now = dt.datetime.now(dt.UTC)
    listed = []
    for schedule in found:
        last = last_run(snapshot, schedule.name)
        listed.append({"name": schedule.name, "trigger": schedule.describe(),
                       "task": schedule.task, "args": schedule.args,
                       "targets": schedule.targets, "producer": schedule.producer,
                       "last_run": iso(last) if last else None,
                       "next_run": iso(next_run(schedule, last, now))})
    if as_json:
        print_json({"schedules": listed, "problems": problems})
        return
    table = Table(title=f"{len(listed)} schedules")
    for column in ("name", "trigger", "task", "nodes", "args", "signer", "last run",
                   "next run"):
        table.add_column(column)
    for row in listed:
        targets = row["targets"]
        table.add_row(row["name"], row["trigger"], row["task"],
                      targets if isinstance(targets, str) else ", ".join(targets),
                      Text(json.dumps(row["args"], ensure_ascii=False)), row["producer"],
                      row["last_run"] or "never", row["next_run"])
    out.print(table)
    for problem in problems:
        err.print(f"[yellow]problem:[/] {problem}", highlight=False)


@schedule_app.command("remove")
def schedule_remove_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The schedule to remove.")],
) -> None:
    """Remove a schedule (and the record of its last run); its master stops it at its next
    poll.  Exit 2: no such schedule."""
    try:
        ops = [Remove(layout.schedule_path(name)), Remove(layout.schedule_run_path(name))]
    except ValueError as error:
        fail(str(error), EXIT_USAGE)
    try:
        result = open_repo(ctx).transact(ops, f"remove schedule {name}")
    except GitError as error:
        fail(str(error))
    if result.commit is None:
        fail(f"no schedule {name}; `picluster schedule list` shows them", EXIT_USAGE)
    out.print(f"removed schedule {name}", highlight=False)


def main() -> None:
    from picluster.lab import cli as lab_cli

    app.add_typer(lab_cli.app, name="lab")
    try:
        app(prog_name="picluster")
    except OSError as error:
        # A file or directory a command needs (a home it cannot create, a key it cannot
        # read): one line naming it, not a traceback.
        print(f"picluster: {error}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
