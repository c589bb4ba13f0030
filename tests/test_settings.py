import dataclasses
import re
from pathlib import Path

import pytest
from helpers import run_cli

from picluster.settings import DEFAULTS, ConfigError, Settings, config_path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_parse_reads_keys_types_and_comments(tmp_path: Path) -> None:
    source = tmp_path / "picluster.conf"
    settings = Settings.parse(
        "# a comment\n"
        "repo = ssh://git@host/cluster.git  # trailing comment\n"
        "home = state\n"
        "master = yes\n"
        "mac = B8:27:EB:00:00:01\n"
        "poll_interval = 2m\n"
        "prune_after = 5\n"
        "converge_batch = 0\n", source)
    assert settings.repo == "ssh://git@host/cluster.git"
    assert settings.home == tmp_path / "state"  # relative to the config file
    assert settings.master is True
    assert settings.mac == "b827eb000001"
    assert settings.poll_interval == 120.0
    assert settings.prune_after == 5
    assert settings.converge_batch == 0  # no cap
    assert settings.clone_dir == tmp_path / "state" / "repo"


def test_defaults_live_in_one_place() -> None:
    settings = Settings.parse("repo = /x\n")
    declared = [f for f in dataclasses.fields(Settings) if f.name != "source"]
    keys = [f.name for f in declared]
    assert list(DEFAULTS) == keys
    assert all(f.metadata["help"] for f in declared)  # each key says what it is for
    for key in keys[1:]:  # all but repo, which has no default
        assert getattr(settings, key) == DEFAULTS[key]
    assert settings.master_grace == 300 and settings.poll_interval == 30
    assert Settings(repo="/x") == settings


@pytest.mark.parametrize(("raw", "seconds"), [("30", 30.0), ("30s", 30.0), ("5m", 300.0),
                                              ("1h", 3600.0), ("0.5", 0.5)])
def test_durations_take_seconds_or_a_unit(raw: str, seconds: float) -> None:
    assert Settings.parse(f"repo = /x\nping_interval = {raw}\n").ping_interval == seconds


def test_only_master_grace_may_be_zero() -> None:
    assert Settings.parse("repo = /x\nmaster_grace = 0\n").master_grace == 0
    with pytest.raises(ConfigError, match="'0' must be more than 0"):
        Settings.parse("repo = /x\npoll_interval = 0\n")


# What the README's boot-config table shows for a key without a default: what it means.
_UNSET_SHOWN = {"mac": "(read)", "ip": "(read)", "user": "(root)", "user_ssh_dir": "~user/.ssh"}


def _shown(key: str, default: object) -> str:
    """A declared default as the README's table writes it."""
    if default is None:
        required = next(f for f in dataclasses.fields(Settings) if f.name == key).default \
            is dataclasses.MISSING
        return "(required)" if required else _UNSET_SHOWN.get(key, "")
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def _readme_table() -> dict[str, str]:
    """Key -> default cell of the README's boot-config table, without backticks.  A row
    may list several keys; its default cell gives one default for all, or one each."""
    section = README.read_text().split("\n## The boot config\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, str] = {}
    for row in re.findall(r"^\| *`.*$", section, re.MULTILINE):
        keys_cell, default_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        keys = [k.strip(" `") for k in keys_cell.split(",")]
        defaults = [d.strip(" `") for d in default_cell.split(",")]
        if len(defaults) != len(keys):
            defaults = [default_cell.strip(" `")] * len(keys)
        for key, default in zip(keys, defaults, strict=True):
            assert key not in table, f"README lists {key} twice"
            table[key] = default
    return table


def test_readme_lists_every_key_with_its_default() -> None:
    assert _readme_table() == {key: _shown(key, value) for key, value in DEFAULTS.items()}


def test_seed_style_config_is_accepted() -> None:
    assert Settings.parse("PI_repo_addr=https://example.org/c.git\n").repo == \
        "https://example.org/c.git"


@pytest.mark.parametrize(("text", "line", "key", "words"), [
    ("repo = /x\npol_interval = 3\n", 2, "pol_interval", "did you mean 'poll_interval'"),
    ("repo = /x\nmaster = maybe\n", 2, "master", "use true or false"),
    ("repo = /x\npoll_interval = soon\n", 2, "poll_interval", "not a duration"),
    ("repo = /x\npoll_interval = nan\n", 2, "poll_interval", "not a duration"),
    ("repo = /x\nping_interval = 1e999\n", 2, "ping_interval", "not a duration"),
    ("repo = /x\nmac = 12:34\n", 2, "mac", "not a MAC"),
    ("repo = /x\nip = 300.1.1.1\n", 2, "ip", "not an IPv4"),
    ("repo = /x\nworkers = 0\n", 2, "workers", "not a whole number of at least 1"),
    ("repo = /x\nconverge_batch = -1\n", 2, "converge_batch",
     "not a whole number of at least 0"),
    ("repo = /x\nhostname = -pi\n", 2, "hostname", "not a host name"),
    ("repo = /x\nlog_level = loud\n", 2, "log_level", "not one of debug, error, info, warning"),
    ("repo = /x\nbranch =\n", 2, "branch", "no value; give one or delete the line"),
    ("repo = /x\nrepo = /y\n", 2, "repo", "set twice"),
    ("home = /x\n", None, "repo", "missing"),
    ("repo /x\n", 1, None, "not 'key = value'"),
])
def test_bad_config_names_file_line_and_key(text: str, line: int | None, key: str | None,
                                            words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.parse(text, Path("/boot/picluster.conf"))
    error = caught.value
    assert (error.line, error.key) == (line, key)
    assert words in str(error)
    assert str(error).startswith(f"/boot/picluster.conf{':' + str(line) if line else ''}:")


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PICLUSTER_CONFIG", raising=False)
    assert config_path() == Path("/boot/picluster.conf")
    monkeypatch.setenv("PICLUSTER_CONFIG", "/etc/p.conf")
    assert config_path() == Path("/etc/p.conf")
    assert config_path("/x.conf") == Path("/x.conf")


def test_cli_exits_2_with_one_line_naming_file_line_and_key(tmp_path: Path) -> None:
    config = tmp_path / "picluster.conf"
    config.write_text("repo = /x\npoll_interval = often\n")
    done = run_cli("status", config=config)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert f"{config}:2:" in done.stderr and "poll_interval" in done.stderr


def test_cli_missing_config_is_a_clear_error(tmp_path: Path) -> None:
    done = run_cli("status", config=tmp_path / "absent.conf")
    assert done.returncode == 2
    assert "not found" in done.stderr and "prepare-boot" in done.stderr
