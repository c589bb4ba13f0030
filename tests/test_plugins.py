"""Tasks of your own: installed packages add tasks through the entry-point group
`picluster.tasks`; the node reports them in its facts, `enqueue` refuses what a node does
not report, and a package that fails to load is reported while the agent runs on."""

import json
import os
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml
from helpers import Cluster, mac_of, run_cli, wait_until

from picluster import layout, plugins
from picluster.node import catalogue
from picluster.tasks import TaskContext

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "diskfree"
NODE, OTHER = mac_of(1), mac_of(2)


def install(site: Path, name: str, version: str, entry_points: dict[str, str],
            files: dict[str, str]) -> None:
    """A package as pip installs it into `site`: its files and a dist-info whose
    entry_points.txt declares `entry_points` in the picluster.tasks group."""
    for path, text in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(text)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        f"[{plugins.GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))


def install_example(site: Path) -> None:
    """examples/diskfree, installed as its pyproject.toml says."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    shutil.copytree(EXAMPLE / "picluster_diskfree", site / "picluster_diskfree")
    install(site, project["name"], project["version"],
            project["entry-points"][plugins.GROUP], {})


def install_broken(site: Path) -> None:
    install(site, "picluster-broken", "0.1", {"broken": "picluster_broken:task"},
            {"picluster_broken.py": "raise ImportError('numpy is not installed')\n"})


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory of installed packages on sys.path (this process only)."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


def test_installed_tasks_join_the_catalogue_with_their_version(site: Path) -> None:
    install_example(site)
    install(site, "picluster-pair", "2.3", {"pair": "picluster_pair:TASK"},
            {"picluster_pair.py": "from picluster.schema import Schema\n"
                                  "TASK = (lambda args, context: 'paired', Schema())\n"})
    loaded = plugins.load(catalogue)
    assert loaded.errors == {}
    assert loaded.catalogue.versions()["diskfree"] == "1.0"
    assert loaded.catalogue.versions()["pair"] == "2.3"
    assert loaded.catalogue.versions()["echo"] == catalogue.versions()["echo"]
    function = loaded.catalogue.get("diskfree")
    assert function is not None
    result = function({}, TaskContext(None, None, dict))  # type: ignore[arg-type]
    assert result["path"] == "/" and result["total"] > 0
    assert "diskfree" not in catalogue.names()  # the built-ins stay as they are


def test_a_package_that_fails_to_load_is_left_out_and_reported(site: Path,
                                                                caplog: pytest.LogCaptureFixture
                                                                ) -> None:
    install_broken(site)
    install(site, "picluster-bad", "1", {"noschema": "picluster_bad:plain",
                                         "echo": "picluster_bad:plain",
                                         "Bad Name": "picluster_bad:plain"},
            {"picluster_bad.py": "def plain(args, context):\n    return 1\n"})
    loaded = plugins.load(catalogue)
    assert "ImportError: numpy is not installed" in loaded.errors["broken"]
    assert "picluster-broken 0.1" in loaded.errors["broken"]
    assert "neither a function decorated" in loaded.errors["noschema"]
    assert "task 'echo' exists already" in loaded.errors["echo"]
    assert "not a task name" in loaded.errors["Bad Name"]
    assert set(loaded.catalogue.names()) == set(catalogue.names())
    assert "task broken from an installed package is left out" in caplog.text


def facts(cluster: Cluster, mac: str) -> dict:
    return yaml.safe_load(cluster.snapshot().read(layout.facts_path(mac)) or "{}") or {}


def test_a_packaged_task_runs_through_git_and_enqueue_checks_the_catalogue(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    site.mkdir()
    install_example(site)
    install_broken(site)
    cluster.start_agent(cluster.node_config(2))  # without the packages
    wait_until(lambda: facts(cluster, OTHER).get("tasks"), 30, "node 2 to register")
    # Node 1 has them: its agent's environment finds them (as pip would install them).
    plain = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), plain])))
    cluster.start_agent(cluster.node_config(1))
    monkeypatch.setenv("PYTHONPATH", plain)
    reported = wait_until(lambda: facts(cluster, NODE).get("tasks"), 30, "node 1's facts")
    assert reported["diskfree"] == "1.0" and "run" in reported
    assert "numpy is not installed" in facts(cluster, NODE)["task_errors"]["broken"]
    assert "diskfree" not in facts(cluster, OTHER)["tasks"]

    # The operator's side has no such package: the node reports the task, so it goes.
    operator = cluster.operator_config()
    done = run_cli("enqueue", NODE, "diskfree", "--arg", "path=/", "--wait", "60",
                   config=operator)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "ok" and outcome["result"]["total"] > 0
    # The node checks the arguments the operator's side could not.
    bad = run_cli("enqueue", NODE, "diskfree", "--arg", "path=relative", "--wait", "60",
                  config=operator)
    assert bad.returncode == 1
    assert "argument 'path' must be an absolute path" in json.loads(bad.stdout)["error"]
    # A node that does not report the task never gets it; one that reports none might.
    refused = run_cli("enqueue", OTHER, "diskfree", config=operator)
    assert refused.returncode == 2
    assert f"node {OTHER} does not run task 'diskfree'" in refused.stderr
    assert cluster.snapshot().listdir(layout.queue_dir(OTHER), files=True) == []
    unknown = run_cli("enqueue", mac_of(9), "diskfree", config=operator)
    assert unknown.returncode == 2 and "unknown task 'diskfree'" in unknown.stderr
    # The broken package did not stop the agent.
    assert run_cli("enqueue", NODE, "echo", "--wait", "60", config=operator).returncode == 0
