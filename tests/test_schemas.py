"""Task argument schemas (picluster.schema), each built-in's schema, the Ganglia config
text that only takes checked values, and the settings that refuse what git would run."""

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, keypair, mac_of, run_cli, wait_until

from picluster import ganglia, layout
from picluster.ganglia import SCHEMA, GangliaConfig, gmetad_conf, gmond_conf
from picluster.node import catalogue
from picluster.queue import enqueue, make_task, read_signers, scan
from picluster.registry import ClusterVars, Member, Membership
from picluster.schema import (
    ArgError,
    Bool,
    Duration,
    Float,
    Int,
    IPv4,
    Json,
    List,
    Port,
    Schema,
    Str,
    shown,
)
from picluster.settings import ConfigError, Settings
from picluster.tasks import Catalogue, Task, TaskContext, TaskError

NODE = mac_of(1)
EVIL_IP = '1.2.3.4\n}\nmodules { module { path = "/tmp/evil.so" } }'
GOOD_GANGLIA = {"cluster": "lab", "master_ip": "198.18.0.11"}


def refused(schema: Schema, args: Any) -> str:
    with pytest.raises(ArgError) as caught:
        schema.check(args)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    return message


# -- the engine -----------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "good", "bad"), [
    (Int(minimum=1, maximum=10), [1, 10], [0, 11, 2.0, True, "3", None]),
    (Port(), [1, 65535], [0, 65536, -1, 8649.0, "8649"]),
    (Float(minimum=0, maximum=1), [0, 0.5, 1], [-0.1, 1.1, float("nan"), False, "0.5"]),
    (Duration(maximum=3600), [0, 3600, 1.5], [-1, 3600.5, 1e6, float("inf"), 10**400, None]),
    (Str(max_length=5), ["", "abcde"], ["abcdef", 5, None]),
    (Str(max_length=64, pattern=r"[a-z]+"), ["lab"], ["lab\n", "l{b}", "", "LAB"]),
    (Bool(), [True, False], [0, 1, "true", None]),
    (IPv4(), ["198.18.0.11", "0.0.0.0"],
     [EVIL_IP, "198.18.0.011", " 198.18.0.11", "198.18.0.11\n", "::1", "300.1.1.1", 1]),
    (List(item=IPv4(), max_length=2), [[], ["1.2.3.4"], ("1.2.3.4", "1.2.3.5")],
     [["1.2.3.4", "x"], ["1.2.3.4"] * 3, "1.2.3.4", {"a": 1}]),
    (Json(max_depth=3), [None, 1, "x", [[1]], {"a": {"b": []}}], [[[[[]]]], {"a": [[{}]]}]),
])
def test_each_rule_takes_what_it_says_and_names_the_argument_otherwise(
        rule: Any, good: list[Any], bad: list[Any]) -> None:
    for value in good:
        rule.check(value, "x")
    for value in bad:
        with pytest.raises(ArgError) as caught:
            rule.check(value, "x")
        message = str(caught.value)
        assert message.startswith("argument 'x") and " must be " in message
        # A list names the item it refuses (test_list_items_are_named_by_their_index).
        assert message.endswith(f", not {shown(value)}") or message.startswith("argument 'x[")
        assert "\n" not in message


def test_a_schema_fills_defaults_and_refuses_unknown_or_missing_arguments() -> None:
    schema = Schema({"seconds": Duration(maximum=60, default=1.0), "name": Str()})
    assert schema.check({"name": "a"}) == {"seconds": 1.0, "name": "a"}
    assert schema.check({"name": "a", "seconds": 2}) == {"seconds": 2.0, "name": "a"}
    assert refused(schema, {"seconds": 2}) == \
        "argument 'name' is missing: give text, at most 256 characters"
    assert refused(schema, {"name": "a", "evil": 1}) == \
        "unknown argument 'evil'; the arguments it takes: seconds, name"
    assert refused(Schema(), {"a": 1}) == "unknown argument 'a'; the arguments it takes: none"
    assert refused(schema, [1]) == "the arguments must be a JSON object, not list"


def test_list_items_are_named_by_their_index() -> None:
    schema = Schema({"members": List(item=IPv4(), max_length=8)})
    assert refused(schema, {"members": ["1.2.3.4", EVIL_IP]}).startswith(
        "argument 'members[1]' must be an IPv4 address")


def test_arguments_are_bounded_in_size_and_depth_without_recursion() -> None:
    schema = Schema(others=Json(), max_bytes=1000)
    assert schema.check({"a": [1, 2], "b": {"c": None}}) == {"a": [1, 2], "b": {"c": None}}
    assert "at most 1000" in refused(schema, {"a": "x" * 1000})
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    assert refused(schema, {"a": deep}) == "the arguments nest deeper than 64 levels"
    assert "JSON values" in refused(schema, {"a": float("nan")})
    assert "JSON values" in refused(schema, {"a": object()})


def test_a_refused_value_is_never_echoed_whole() -> None:
    huge = "x" * 100_000
    assert shown(huge) == repr(huge)[:60] + "…"
    message = refused(Schema({"ip": IPv4()}, max_bytes=10**6), {"ip": huge})
    assert len(message) < 200 and message.endswith("…")
    assert len(refused(Schema(), {huge: 1})) < 200
    assert shown(10**5000) == "a number too long to show"


# -- the catalogue --------------------------------------------------------------------------


def test_the_catalogue_checks_before_its_function_runs() -> None:
    calls: list[dict[str, Any]] = []
    mine = Catalogue()

    @mine.task("count", Schema({"n": Int(minimum=0, maximum=9, default=0)}))
    def count(args: dict[str, Any], context: TaskContext) -> int:
        calls.append(args)
        return args["n"]

    derived = Catalogue(mine)
    run = derived.get("count")
    assert run is not None and derived.get("other") is None
    context = TaskContext(None, None, dict)  # type: ignore[arg-type]
    assert run({}, context) == 0 and calls == [{"n": 0}]  # the default filled in
    with pytest.raises(TaskError, match=r"^task 'count': argument 'n' must be a whole number "
                                        r"from 0 to 9, not 10$"):
        run({"n": 10}, context)
    assert len(calls) == 1  # never ran
    with pytest.raises(TaskError, match=r"^unknown task 'other'; the tasks are: count$"):
        derived.check("other", {})


@pytest.mark.parametrize(("name", "args"), [
    ("echo", {}), ("echo", {"msg": "hi", "n": 3, "nested": {"a": [1, None, True]}}),
    ("sleep", {}), ("sleep", {"seconds": 0}), ("sleep", {"seconds": 3600}),
    ("register", {}),
    ("ganglia", GOOD_GANGLIA),
    ("ganglia", {**GOOD_GANGLIA, "gmond_port": 9649, "gmetad_xml_port": 9651,
                 "metadata_interval": 2, "host_dmax": 60, "members": ["198.18.0.12"]}),
])
def test_builtins_take_their_arguments(name: str, args: dict[str, Any]) -> None:
    catalogue.check(name, args)


@pytest.mark.parametrize(("name", "args", "words"), [
    ("echo", {"big": "x" * 70_000}, "at most 65536"),
    ("echo", {"deep": json.loads("[" * 40 + "]" * 40)}, "nested at most 32 deep"),
    ("sleep", {"seconds": 1e6}, "'seconds' must be a duration of 0 to 3600 seconds, not 1000000.0"),
    ("sleep", {"seconds": -1}, "'seconds' must be a duration of 0 to 3600 seconds"),
    ("sleep", {"seconds": "never"}, "'seconds' must be a duration"),
    ("sleep", {"secs": 1}, "unknown argument 'secs'"),
    ("register", {"ip": "1.2.3.4"}, "unknown argument 'ip'; the arguments it takes: none"),
    ("ganglia", {**GOOD_GANGLIA, "master_ip": EVIL_IP}, "'master_ip' must be an IPv4 address"),
    ("ganglia", {**GOOD_GANGLIA, "cluster": 'lab" }\nmodules {'}, "'cluster' must be a plain name"),
    ("ganglia", {**GOOD_GANGLIA, "cluster": "x" * 65}, "at most 64 characters"),
    ("ganglia", {**GOOD_GANGLIA, "gmond_port": 70000}, "'gmond_port' must be a port (1-65535)"),
    ("ganglia", {**GOOD_GANGLIA, "gmetad_xml_port": 65535}, "a port (1-65534)"),
    ("ganglia", {**GOOD_GANGLIA, "metadata_interval": 0}, "'metadata_interval' must be"),
    ("ganglia", {**GOOD_GANGLIA, "host_dmax": 10**9}, "'host_dmax' must be"),
    ("ganglia", {**GOOD_GANGLIA, "members": ["198.18.0.12", "evil\n"]}, "'members[1]' must be"),
    ("ganglia", {**GOOD_GANGLIA, "members": ["198.18.0.12"] * 4097}, "at most 4096 items"),
    ("ganglia", {"cluster": "lab"}, "'master_ip' is missing"),
    ("ganglia", {**GOOD_GANGLIA, "extra": 1}, "unknown argument 'extra'"),
    ("rm-rf", {}, "unknown task 'rm-rf'"),
])
def test_builtins_refuse_what_their_schema_does_not_allow(name: str, args: dict[str, Any],
                                                          words: str) -> None:
    with pytest.raises(TaskError) as caught:
        catalogue.check(name, args)
    assert words in str(caught.value) and "\n" not in str(caught.value)


def test_ganglia_schema_defaults_are_the_configs() -> None:
    checked = SCHEMA.check(dict(GOOD_GANGLIA))
    assert GangliaConfig.from_args(checked) == GangliaConfig("lab", "198.18.0.11")


def test_sleep_sleeps_what_its_schema_allows() -> None:
    run = catalogue.get("sleep")
    assert run is not None
    context = TaskContext(None, None, dict)  # type: ignore[arg-type]
    assert run({"seconds": 0.05}, context) == {"slept": 0.05}
    with pytest.raises(ValueError, match="3600"):
        run({"seconds": 3601}, context)


# -- the producer ---------------------------------------------------------------------------


def test_make_task_with_a_catalogue_refuses_before_anything_is_signed() -> None:
    with pytest.raises(TaskError, match="'seconds' must be a duration"):
        make_task(NODE, "sleep", {"seconds": 1e6}, "operator", catalogue=catalogue)
    task = make_task(NODE, "sleep", {"seconds": 5}, "operator", catalogue=catalogue)
    assert task.args == {"seconds": 5}  # as written: the defaults are the node's business


def test_the_cli_refuses_bad_arguments_with_one_line_and_exit_2(cluster: Cluster) -> None:
    config = cluster.operator_config()
    for args, words in [(["--arg", "seconds=1e6"],
                         "task 'sleep': argument 'seconds' must be a duration of 0 to 3600 "
                         "seconds, not 1000000.0"),
                        (["--arg", "until=tomorrow"], "unknown argument 'until'")]:
        done = run_cli("enqueue", NODE, "sleep", *args, "--wait", "5", config=config)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and words in done.stderr
        assert done.stdout == ""
    done = run_cli("enqueue", NODE, "ganglia", "--arg", "cluster=lab", "--arg",
                   f"master_ip={EVIL_IP}", config=config)
    assert done.returncode == 2 and "'master_ip' must be an IPv4 address" in done.stderr
    assert done.stderr.count("\n") == 1
    assert cluster.snapshot().listdir(layout.queue_dir(NODE), files=True) == []  # none left


def test_scan_checks_the_arguments_of_signed_tasks_only(cluster: Cluster) -> None:
    repo = cluster.operator_repo()
    bad = {"seconds": 1e6}
    (signed,) = enqueue(repo, [make_task(NODE, "sleep", bad, "operator")],
                        cluster.operator_key)
    (forged,) = enqueue(repo, [make_task(NODE, "sleep", bad, "operator")],
                        keypair(cluster.root / "mallory"))
    snapshot = cluster.snapshot()
    found = {p.path.rsplit("/", 1)[1]: p.rejection.error
             for p in scan(snapshot, NODE, catalogue, signers=read_signers(snapshot))
             if p.rejection}
    assert "'seconds' must be a duration of 0 to 3600 seconds" in found[f"{signed.id}.json"]
    assert "not a trusted signer" in found[f"{forged.id}.json"]  # who, before what


# -- the node: a real repository and a real agent ------------------------------------------


def folder_files(cluster: Cluster, folder: str) -> list[str]:
    return cluster.snapshot().listdir(f"{layout.queue_dir(NODE)}/{folder}", files=True)


def test_signed_tasks_with_bad_arguments_are_rejected_and_the_good_ones_run(
        cluster: Cluster) -> None:
    repo = cluster.operator_repo()
    # Signed by a trusted producer that skipped the checks (no catalogue given).
    before, hostile, endless, after = enqueue(repo, [
        make_task(NODE, "echo", {"n": 1}, "operator"),
        make_task(NODE, "ganglia", {"cluster": "lab", "master_ip": EVIL_IP}, "operator"),
        make_task(NODE, "sleep", {"seconds": 1e6}, "operator"),
        make_task(NODE, "echo", {"n": 2}, "operator"),
    ], cluster.operator_key)
    config = cluster.node_config(1)
    cluster.start_agent(config)
    wait_until(lambda: len(folder_files(cluster, "rejected")) == 2
               and len(folder_files(cluster, "done")) == 2, 60,
               "two rejections and two results")
    snap = cluster.snapshot()
    folder = layout.queue_dir(NODE)
    reasons = {name.removesuffix(".json"): json.loads(snap.read(f"{folder}/rejected/{name}")
                                                      or "{}")
               for name in folder_files(cluster, "rejected")}
    assert set(reasons) == {hostile.id, endless.id}
    assert reasons[hostile.id]["error"].startswith(
        f"{folder}/{hostile.id}.json: task 'ganglia': argument 'master_ip' must be an IPv4 "
        "address")
    assert reasons[endless.id]["error"] == (
        f"{folder}/{endless.id}.json: task 'sleep': argument 'seconds' must be a duration of "
        "0 to 3600 seconds, not 1000000.0")
    assert Task.from_json(reasons[hostile.id]["original"], "x") == hostile  # nothing lost
    results = {t.id: json.loads(snap.read(f"{folder}/done/{t.id}.json") or "{}")
               for t in (before, after)}
    assert [r["result"] for r in results.values()] == [{"n": 1}, {"n": 2}]
    assert snap.listdir(folder, files=True) == []  # every pending file has an outcome
    home = Settings.load(config).home
    assert not any("evil" in path.read_text(errors="replace")
                   for path in home.rglob("*.conf") if path.is_file())


# -- Ganglia's config text ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"master_ip": EVIL_IP},
    {"cluster": 'lab"\n}\nudp_send_channel { host = 203.0.113.9 }'},
    {"members": ("198.18.0.12", "198.18.0.13 mask = 0")},
    {"gmond_port": "8649\n}"},
    {"metadata_interval": "20 }"},
    {"host_dmax": -1},
])
def test_the_config_text_refuses_unchecked_values_even_when_called_directly(
        bad: dict[str, Any], tmp_path: Path) -> None:
    config = GangliaConfig(**{**GOOD_GANGLIA, **bad})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="argument '"):
        gmond_conf(config, own_ip="198.18.0.11", hostname="pi-1", is_master=True)
    with pytest.raises(ValueError, match="argument '"):
        gmetad_conf(config, rrd_dir=tmp_path)
    settings = Settings.parse(f"repo = /x\nhome = {tmp_path}\n")
    with pytest.raises(ValueError):
        ganglia.apply(settings, config, own_ip="198.18.0.12", hostname="pi-2", is_master=False)
    assert list(settings.rendered_dir.glob("*")) == []  # nothing written


def test_the_hosts_own_values_are_checked_too(tmp_path: Path) -> None:
    config = GangliaConfig(**GOOD_GANGLIA)
    with pytest.raises(ValueError, match="argument 'own_ip'"):
        gmond_conf(config, own_ip="198.18.0.11\n}", hostname="pi-1", is_master=True)
    with pytest.raises(ValueError, match="is not a host name"):
        gmond_conf(config, own_ip="198.18.0.11", hostname='pi"\n}', is_master=False)
    with pytest.raises(ValueError, match="cannot be quoted"):
        gmetad_conf(config, rrd_dir=tmp_path / 'rrds"\ngridname "x')
    text = gmond_conf(config, own_ip="198.18.0.11", hostname="pi-1.lan", is_master=True)
    assert 'override_hostname = "pi-1.lan"' in text


def test_the_masters_own_config_stays_within_the_schema() -> None:
    # An hour's ping interval pruned after 1000 misses: gmond still gets a bounded dmax.
    settings = Settings.parse("repo = /x\nping_interval = 1h\nprune_after = 1000\n")
    membership = Membership((Member("b827eb000001", "198.18.0.11"),), master="b827eb000001")
    config = ganglia.cluster_config(settings, membership, ClusterVars(name="lab"))
    assert config.host_dmax == 30 * 86400
    gmond_conf(config, own_ip="198.18.0.11", hostname="pi-1", is_master=True)
    bad = ClusterVars(ganglia={"gmetad_xml_port": 65535})
    assert ganglia.config_problems(bad) == [
        "local-vars/cluster.yml: 'gmetad_xml_port' must be a port (1-65534), not 65535; "
        "using 8651"]


# -- settings: the repository, relative paths, long values ----------------------------------


@pytest.mark.parametrize("repo", [
    "ext::sh -c touch% /tmp/pwned", "fd::17", "EXT::sh", "transport::anything",
    "weird://host/x.git", "--upload-pack=touch /tmp/pwned", "-oProxyCommand=x",
    "ssh://-oProxyCommand=touch%20x/repo.git", "ssh://-user@host/x", "git@-host:x.git",
])
def test_repositories_git_would_run_a_program_for_are_refused(repo: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.parse(f"repo = {repo}\n", Path("/boot/picluster.conf"))
    error = caught.value
    assert (error.line, error.key) == (1, "repo")
    assert str(error).startswith("/boot/picluster.conf:1: repo: ")
    assert str(error).endswith("use ssh://, git://, https://, file:// or a path")
    assert "\n" not in str(error)


@pytest.mark.parametrize(("repo", "resolved"), [
    ("../x.git", "/etc/pc/../x.git"),
    ("x.git", "/etc/pc/x.git"),
    ("/srv/x.git", "/srv/x.git"),
    ("ssh://git@host/x.git", "ssh://git@host/x.git"),
    ("git@host:x.git", "git@host:x.git"),
    ("host:srv/x.git", "host:srv/x.git"),
    ("https://example.org/c.git", "https://example.org/c.git"),
    ("file:///srv/x.git", "file:///srv/x.git"),
    ("git://198.18.0.2/x.git", "git://198.18.0.2/x.git"),
])
def test_a_relative_repo_is_relative_to_the_config_like_home(repo: str, resolved: str) -> None:
    settings = Settings.parse(f"repo = {repo}\nhome = state\n", Path("/etc/pc/picluster.conf"))
    assert settings.repo == resolved
    assert settings.home == Path("/etc/pc/state")


def test_the_cli_finds_a_relative_repo_from_any_folder(cluster: Cluster) -> None:
    folder = cluster.root / "conf"
    folder.mkdir()
    config = folder / "operator.conf"
    config.write_text(f"repo = ../{cluster.bare.name}\nhome = state\n"
                      f"signing_key = {cluster.operator_key}\n")
    done = run_cli("enqueue", NODE, "echo", "--arg", "n=1", config=config)
    assert done.returncode == 0, done.stderr
    assert cluster.snapshot().listdir(layout.queue_dir(NODE), files=True) == \
        [f"{done.stdout.strip()}.json"]
    assert (folder / "state" / "repo").exists()


@pytest.mark.parametrize("text", [
    "repo = /x\nmaster = {huge}\n", "repo = /x\nmac = {huge}\n", "repo = /x\nip = {huge}\n",
    "repo = /x\npoll_interval = {huge}\n", "repo = ext::{huge}\n", "repo = /x\n{huge}\n",
    "repo = /x\n{huge} = 1\n", "repo = /x\nlog_level = {huge}\n",
])
def test_a_long_bad_value_is_never_echoed_whole(text: str) -> None:
    huge = "x" * 100_000
    with pytest.raises(ConfigError) as caught:
        Settings.parse(text.format(huge=huge), Path("/boot/picluster.conf"))
    message = str(caught.value)
    assert "x" * 61 not in message and "xxx…" in message
    assert len(message) < 600


def test_the_cli_refuses_an_ext_repo_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "picluster.conf"
    config.write_text(f"repo = ext::sh -c touch% {tmp_path}/pwned\n")
    done = run_cli("status", config=config)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"{config}:1: repo: 'ext::sh" in done.stderr
    assert not (tmp_path / "pwned").exists()
