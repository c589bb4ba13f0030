"""Shared bench helpers: a throwaway cluster repository and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from picluster import layout
from picluster.gitstore import init_bare
from picluster.signing import signer_line


def emit(result: dict[str, object]) -> None:
    print(json.dumps(result, indent=2))
    sys.stdout.flush()


@contextmanager
def scratch(parent: str | None) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="picluster-bench-", dir=parent))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def cluster_repo(root: Path, extra: dict[str, str] | None = None) -> tuple[Path, Path]:
    """A bare cluster repository trusting a fresh operator key, with `extra` files (path ->
    text; added to the seed's, or appended to a seed file); (bare, key)."""
    key = root / "operator_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f",
                    str(key)], check=True)
    files = layout.seed_files()
    for path, text in (extra or {}).items():
        files[path] = files.get(path, "") + text
    files[layout.ALLOWED_SIGNERS] += signer_line(key.with_suffix(".pub").read_text(),
                                                 "operator") + "\n"
    init_bare(root / "cluster.git", files, "init")
    return root / "cluster.git", key


def add_converge_batch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--converge-batch", type=int, metavar="N",
                        help="every node's converge_batch: at most N nodes run their "
                             "playbooks at once, 0: all (default: the setting's default)")


def lab_settings(options: argparse.Namespace) -> dict[str, object]:
    """The boot-config keys the options ask every lab card to get (Lab.up's settings)."""
    return {} if options.converge_batch is None else {"converge_batch": options.converge_batch}


def write_config(path: Path, **values: object) -> Path:
    path.write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


def free_udp_port(ip: str = "127.0.0.1") -> int:
    """A UDP port nothing listens on at `ip` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and of its children that have exited (its git commands)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def now() -> float:
    return time.monotonic()
