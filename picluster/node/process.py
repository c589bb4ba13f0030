"""The agent's own process, `python -m picluster.node`: what `picluster agent` and
`picluster boot` become (exec, the same pid) once their own part is done.

An agent runs for months.  The command line's libraries (typer, pydantic, rich), loaded to
parse one command, would stay in its memory all that time: about 12 MB of an idle
worker's 57.  A process of its own loads only what a node runs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from picluster.settings import ConfigError, Settings

__all__ = ["become_agent", "log_to_stderr", "main"]

_EXIT_FAILED, _EXIT_USAGE = 1, 2  # the command line's


def log_to_stderr(verbose: bool) -> None:
    """How every picluster process logs: one line per record on stderr."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("apscheduler", "huey", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def become_agent(settings: Settings) -> NoReturn:
    """Replace this process with the agent of `settings` (read from its file, with its
    `ssh_key`), logging debug detail if this process does."""
    argv = [sys.executable, "-m", "picluster.node", "--config", str(settings.source)]
    if settings.ssh_key is not None:
        argv += ["--ssh-key", str(settings.ssh_key)]
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        argv.append("--verbose")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def main(args: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m picluster.node",
                                     description="The picluster agent (`picluster agent`).")
    parser.add_argument("--config", type=Path, help="the boot config (default: as picluster's)")
    parser.add_argument("--ssh-key", type=Path, help="the identity, in place of the config's")
    parser.add_argument("--verbose", action="store_true", help="log debug detail")
    options = parser.parse_args(args)
    log_to_stderr(options.verbose)
    try:
        settings = Settings.load(options.config)
    except ConfigError as error:
        _fail(str(error), _EXIT_USAGE)
    logging.getLogger().setLevel(logging.DEBUG if options.verbose else
                                 settings.log_level.upper())
    if options.ssh_key is not None:
        settings = settings.replace(ssh_key=options.ssh_key)
    from picluster.identity import IdentityError
    from picluster.node.agent import Agent
    from picluster.signing import SignatureError
    from picluster.trust import TrustError

    try:
        Agent(settings).run()
    except (IdentityError, SignatureError, TrustError) as error:
        _fail(str(error), _EXIT_USAGE)
    except OSError as error:  # a file it needs: one line naming it, as the command line
        _fail(str(error), _EXIT_FAILED)


def _fail(message: str, code: int) -> NoReturn:
    print(f"picluster: {message}", file=sys.stderr)
    sys.exit(code)
