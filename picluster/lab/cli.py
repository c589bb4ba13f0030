"""`picluster lab`: the command line of the virtual cluster; the work is in picluster.lab."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from picluster.lab.errors import LabError
from picluster.lab.hosts import FAST_TIMINGS
from picluster.lab.lab import GIT_MODES, Lab
from picluster.lab.machine import require_root
from picluster.lab.net import DEFAULT_DIR, DIR_ENV, MAX_NODES
from picluster.lab.status import status_json

__all__ = ["app"]

app = typer.Typer(help="A virtual Raspberry Pi cluster: real hosts in network namespaces "
                       "on this machine (needs root).", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)

GitMode = Enum("GitMode", {mode: mode for mode in GIT_MODES}, type=str)  # type: ignore[misc]
_DEFAULT_GIT = GitMode(GIT_MODES[0])

DirOption = Annotated[Path | None, typer.Option(
    "--dir", help=f"The lab's directory (default: ${DIR_ENV}, else {DEFAULT_DIR}).",
    show_default=False)]
NodeArgument = Annotated[str, typer.Argument(help="A node: pi-3, or just 3.")]
# Options that are not the lab's belong to the command (use `--` before the command when
# it has options the lab also has, like --dir).
_PASS_THROUGH = {"ignore_unknown_options": True}


@contextmanager
def _lab(directory: Path | None, *, root: bool = True) -> Iterator[Lab]:
    """The lab in `directory`; a LabError becomes a message and the error's exit code."""
    try:
        if root:
            require_root()
        yield Lab(directory)
    except LabError as error:
        err.print(f"picluster lab: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(error.code) from None


@app.command()
def up(
    nodes: Annotated[int, typer.Option("--nodes", "-n", min=1, max=MAX_NODES,
                                       help="How many Pis.")] = 4,
    master_index: Annotated[int | None, typer.Option(
        help="Designate node K as master (default: the first to register wins).")] = None,
    fast: Annotated[bool, typer.Option(
        help=f"Timings in seconds (poll {FAST_TIMINGS['poll_interval']:g} s, grace "
             f"{FAST_TIMINGS['master_grace']:g} s, ping {FAST_TIMINGS['ping_interval']:g} s), "
             "for tests and demos.")]
    = False,
    git: Annotated[GitMode, typer.Option(  # type: ignore[valid-type]
        help="Serve the cluster repository over ssh, or with git daemon.")] = _DEFAULT_GIT,
    machines: Annotated[bool, typer.Option(
        "--machines", help="Machine nodes: systemd-nspawn containers that boot Debian 12 "
                           "with systemd from a prepared SD card, and install picluster at "
                           "first boot (the first lab builds the image: minutes).")] = False,
    timeout: Annotated[float | None, typer.Option(
        help="Seconds to wait for the cluster (default: 180, 600 with --machines, after "
             "the master's grace period).", show_default=False)] = None,
    setting: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="Add a boot-config key to every node's card, e.g. converge_batch=4 (repeat "
             "for more; wins over --fast's timings).", show_default=False)] = None,
    directory: DirOption = None,
) -> None:
    """Build the lab, boot every node, and wait until the cluster is usable: every node
    registered, a master elected, every node in the master's MPI hostfile."""
    pairs = [item.partition("=") for item in setting or []]
    if any(not key.strip() or not equals for key, equals, _ in pairs):
        raise typer.BadParameter("give KEY=VALUE, e.g. converge_batch=4", param_hint="--set")
    with _lab(directory, root=False) as lab, Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(), console=err) as progress:
        task = progress.add_task("checking the machine", total=None)

        def report(step: str, done: int, total: int) -> None:
            progress.update(task, description=step, completed=done, total=total or None)

        state = lab.up(nodes, master_index=master_index, fast=fast, git=git.value,
                       machines=machines, timeout=timeout,
                       settings={key.strip(): value.strip() for key, _, value in pairs},
                       report=report)
    out.print(f"lab up in {lab.dir}: {len(state.registered)} nodes, master {state.master}.",
              "Next: picluster lab status | exec pi-1 -- hostname | down", sep="\n",
              highlight=False, soft_wrap=True)


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    directory: DirOption = None,
) -> None:
    """Every node: MAC, IP, role, power, registration, and whether MPI would use it."""
    with _lab(directory) as lab:
        nodes = lab.status()
    if as_json:
        out.out(json.dumps(status_json(nodes), indent=2), highlight=False)
        return
    table = Table(title=f"picluster lab {lab.dir}", box=box.SIMPLE_HEAD,
                  show_edge=False, padding=(0, 1, 0, 0))
    # MACs as the repository spells them: the table then fits 80 columns.
    for column in ("node", "MAC", "IP", "role", "state", "in repo", "hostfile", "agent"):
        table.add_column(column, no_wrap=True)

    def mark(value: bool) -> str:
        return "[green]yes[/]" if value else "[red]no[/]"

    for node in nodes:
        table.add_row(node.name, node.mac, node.ip, node.role,
                      "[green]up[/]" if node.state == "up" else "[red]down[/]",
                      mark(node.registered), mark(node.in_hostfile),
                      "running" if node.agent else "[red]stopped[/]")
    out.print(table)
    for node in nodes:
        if node.problem:
            out.print(f"[red]{node.name}:[/] {node.problem}", highlight=False, soft_wrap=True)


@app.command("exec", context_settings=_PASS_THROUGH)
def exec_command(
    node: NodeArgument,
    command: Annotated[list[str], typer.Argument(help="The command, e.g. -- hostname.")],
    directory: DirOption = None,
) -> None:
    """Run a command on a node, as that node; exit with its exit code."""
    with _lab(directory) as lab:
        code = lab.exec(node, command).returncode
    raise typer.Exit(code)


@app.command()
def kill(node: NodeArgument, directory: DirOption = None) -> None:
    """Pull a node's power: its link goes down and all its processes die at once."""
    with _lab(directory) as lab:
        killed = lab.kill(node)
    out.print(f"{killed.name} is down")


@app.command()
def revive(node: NodeArgument, directory: DirOption = None) -> None:
    """Power a node on again (same MAC, same disk): it boots and registers as before."""
    with _lab(directory) as lab:
        revived = lab.revive(node)
    out.print(f"{revived.name} is booting; watch it with `picluster lab status`")


@app.command(context_settings=_PASS_THROUGH)
def mpirun(
    args: Annotated[list[str] | None, typer.Argument(
        help="mpirun's arguments, e.g. -np 4 hostname.")] = None,
    node: Annotated[str | None, typer.Option(
        help="Run it on this node (default: the master).")] = None,
    directory: DirOption = None,
) -> None:
    """Run `picluster mpirun` on the master (or --node) over the cluster's hostfile; exit
    with its exit code."""
    with _lab(directory) as lab:
        code = lab.mpirun(args or [], node=node).returncode
    raise typer.Exit(code)


@app.command()
def down(directory: DirOption = None) -> None:
    """Remove the lab: stop its processes, delete its namespaces and files (idempotent)."""
    with _lab(directory) as lab:
        removed = lab.down()
    out.print(f"lab in {lab.dir} is down ({len(removed)} namespaces removed)")


if __name__ == "__main__":  # runnable before (and without) the main CLI
    app(prog_name="picluster lab")
