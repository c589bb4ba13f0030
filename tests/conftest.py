"""Fixtures shared by the test modules."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Cluster, make_cluster

from picluster.lab import Lab, preflight

# -- core fixtures: a cluster repository on the local file system -----------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh bare cluster repository with a trusted operator; agents stopped after."""
    made = make_cluster(tmp_path)
    try:
        yield made
    finally:
        made.stop_agents()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Lab tests last: the session's lab keeps polling, pinging and running Ansible until
    the session ends, and would slow every test that comes after its first use."""
    items.sort(key=lambda item: item.get_closest_marker("lab") is not None)


# -- lab fixtures (owner: picluster/lab/) ---------------------------------------------------
# Labs are built on first use only, so `pytest -m "not lab"` never touches a namespace.
# Their directories are short ones under /tmp, not tmp_path: ssh's control sockets live in
# each node's home and a unix socket's path must fit in 107 bytes.


def _lab_in_new_dir() -> Lab:
    problems = preflight()
    if problems:
        pytest.skip("lab tests need root and the lab's packages: " + " / ".join(problems))
    return Lab(tempfile.mkdtemp(prefix="pcl-", dir="/tmp"))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """A converged 4-node --fast lab with an ssh git server, shared by the session; removed
    at its end, also when tests (or `up` itself) fail."""
    made = _lab_in_new_dir()
    try:
        made.up(4, fast=True, timeout=180)
        yield made
    finally:
        made.down()


@pytest.fixture
def fresh_lab() -> Iterator[Lab]:
    """A lab directory of its own, not built yet; whatever the test builds is removed."""
    made = _lab_in_new_dir()
    try:
        yield made
    finally:
        made.down()


# -- end of lab fixtures --------------------------------------------------------------------
