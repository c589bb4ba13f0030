"""Keeping gmond (and, on the master, gmetad) running with the configs on disk.

The agent supervises both daemons itself, on a Pi as in the lab: `Daemons.ensure()` starts
what should run, restarts what runs with a config that has since changed, and stops what
should not run.  The configs are written by `picluster.ganglia.node.apply`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

from picluster.ganglia.node import config_paths
from picluster.identity import is_local
from picluster.settings import Settings

__all__ = ["Daemons"]

log = logging.getLogger(__name__)


class _Daemon:
    """One supervised daemon: a child of the agent, restarted when its config changes."""

    def __init__(self, name: str, config: Path, settings: Settings) -> None:
        self.name, self.config = name, config
        self.pidfile = settings.run_dir / f"{name}.pid"
        self.logfile = settings.run_dir / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._running_config: str | None = None
        self._missing = False  # the executable is not installed (said once)

    def _argv(self) -> list[str]:
        if self.name == "gmetad":  # a debug level keeps it in the foreground
            return ["gmetad", "-c", str(self.config), "-p", str(self.pidfile), "-d", "1"]
        return ["gmond", "-c", str(self.config), "-p", str(self.pidfile)]

    def ensure(self, wanted: bool) -> None:
        text = self.config.read_text() if wanted and self.config.exists() else None
        alive = self._process is not None and self._process.poll() is None
        if text is None:
            if alive:
                self.stop()
            return
        if alive and text == self._running_config:
            return
        if self._missing and shutil.which(self.name) is None:
            return  # said so already
        self.stop()
        self._stop_stale()
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        # A fresh log at every start: it cannot grow without end on an SD card.
        with self.logfile.open("wb") as log_file:
            try:
                self._process = subprocess.Popen(self._argv(), stdout=log_file,
                                                 stderr=log_file, stdin=subprocess.DEVNULL)
            except FileNotFoundError:
                # Monitoring is not worth the cluster: the views and prunes go on without it.
                if not self._missing:
                    log.warning("%s is not installed: no Ganglia here (apt install %s, or "
                                "picluster apply ganglia)", self.name,
                                "gmetad" if self.name == "gmetad" else "ganglia-monitor")
                self._missing = True
                return
        self._missing = False
        self._running_config = text
        log.info("%s %s with %s (pid %d)", "restarted" if alive else "started", self.name,
                 self.config, self._process.pid)

    def _stop_stale(self) -> None:
        """A daemon left by an agent that died: gmetad will not start while it lives."""
        try:
            pid = int(self.pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            return
        if cmdline and Path(cmdline[0].decode()).name == self.name \
                and str(self.config).encode() in cmdline:
            # gmond ignores SIGTERM at times; it holds nothing a SIGKILL could lose.
            os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process, self._running_config = None, None


class Daemons:
    """gmond on every node, gmetad on the master, as children of the agent."""

    def __init__(self, settings: Settings) -> None:
        gmond, gmetad = config_paths(settings)
        self._gmond = _Daemon("gmond", gmond, settings)
        self._gmetad = _Daemon("gmetad", gmetad, settings)
        self._warned = False
        # The poll, the flusher and the ping jobs all ensure; once stopped, nothing starts.
        self._lock = threading.Lock()
        self._stopped = False

    def ensure(self, *, is_master: bool, own_ip: str) -> None:
        """Run what the configs on disk say should run; stop the rest.  Nothing runs
        while `own_ip` is not an address of this host: gmond would send to the master
        through whatever route this host has."""
        local = is_local(own_ip)
        with self._lock:
            if self._stopped:
                return
            if not local and not self._warned:
                log.warning("%s is not an address of this host: gmond and gmetad stay off",
                            own_ip)
            self._warned = not local
            self._gmond.ensure(local)
            self._gmetad.ensure(local and is_master)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._gmetad.stop()
            self._gmond.stop()
