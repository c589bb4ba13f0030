"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Cluster, make_cluster

# -- core fixtures: a cluster repository on the local file system -----------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh bare cluster repository with a trusted operator; agents stopped after."""
    made = make_cluster(tmp_path)
    try:
        yield made
    finally:
        made.stop_agents()
