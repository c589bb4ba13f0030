from pathlib import Path

import pytest

from picluster import layout

ROOT = Path(__file__).resolve().parent.parent


def test_this_repository_is_itself_a_cluster_repository() -> None:
    # The seed's promise: fork this repository and use it as the cluster's.
    for path, text in layout.seed_files().items():
        if path != "README.md":
            assert (ROOT / path).read_text() == text, path


@pytest.mark.parametrize("text", ["B8:27:EB:00:00:01", "b8-27-eb-00-00-01", "b827eb000001"])
def test_macs_are_normalized(text: str) -> None:
    assert layout.normalize_mac(text) == "b827eb000001"
    assert layout.format_mac("b827eb000001") == "b8:27:eb:00:00:01"


@pytest.mark.parametrize("text", ["", "b827eb00000", "../../etc/x", "b827eb00000g", "a/b"])
def test_bad_macs_never_become_paths(text: str) -> None:
    with pytest.raises(ValueError, match="not a MAC"):
        layout.ip_path(text)


@pytest.mark.parametrize("task_id", ["..", "../x", "a/b", ".hidden", "x" * 97, ""])
def test_bad_task_ids_never_become_paths(task_id: str) -> None:
    assert not layout.valid_task_id(task_id)
    with pytest.raises(ValueError):
        layout.pending_path("b827eb000001", task_id)
