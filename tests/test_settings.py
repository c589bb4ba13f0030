from pathlib import Path

import pytest
from helpers import run_cli

from picluster.settings import DEFAULTS, ConfigError, Settings, config_path


def test_parse_reads_keys_types_and_comments(tmp_path: Path) -> None:
    source = tmp_path / "picluster.conf"
    settings = Settings.parse(
        "# a comment\n"
        "repo = ssh://git@host/cluster.git  # trailing comment\n"
        "home = state\n"
        "master = yes\n"
        "mac = B8:27:EB:00:00:01\n"
        "poll_interval = 2m\n"
        "prune_after = 5\n", source)
    assert settings.repo == "ssh://git@host/cluster.git"
    assert settings.home == tmp_path / "state"  # relative to the config file
    assert settings.master is True
    assert settings.mac == "b827eb000001"
    assert settings.poll_interval == 120.0
    assert settings.prune_after == 5
    assert settings.clone_dir == tmp_path / "state" / "repo"


def test_defaults_live_in_one_place() -> None:
    settings = Settings.parse("repo = /x\n")
    for key in ("branch", "interface", "poll_interval", "master_grace", "ping_interval",
                "prune_after", "workers"):
        assert getattr(settings, key) == DEFAULTS[key]
    assert settings.master_grace == 300 and settings.poll_interval == 30


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
