"""From SD card to running node: prepare-boot, the first-boot hooks, boot, the service.

Every boot here writes only under tmp_path: the configs point home, user_ssh_dir and
etc_dir there, and systemctl/hostnamectl are never run for real.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import Cluster, ip_of, keypair, mac_of, run_cli, status_of, wait_until

from picluster import layout
from picluster.lab.lab import Lab, render_lab_settings
from picluster.provision import card as card_module
from picluster.provision import firstboot
from picluster.provision.card import FIRSTBOOT, FIRSTRUN, KEY_NAME, RUNCMD, prepare_boot
from picluster.provision.common import BootError
from picluster.provision.firstboot import (
    UNIT,
    boot,
    default_hostname,
    hosts_text,
    install_keys,
    set_hostname,
)
from picluster.provision.wheels import SUMS, WHEELS_DIR, build_wheel, platform_tags, sha256
from picluster.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 " \
          "fsck.repair=yes rootwait quiet\n"
IMAGER_USER_DATA = """#cloud-config
# written by Raspberry Pi Imager
hostname: pi-1
users:
- name: pi
  groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo
  shell: /bin/bash
  lock_passwd: true
  ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKZ0J0i6nxuVXd8WzvHpsiX7Evb5IUkmsxJ0Uy6J4u5p me@laptop
runcmd:
- [sh, -c, echo imager]
"""


def boot_partition(parent: Path) -> Path:
    """A directory laid out like Raspberry Pi OS's boot partition."""
    boot_dir = parent / "bootfs"
    boot_dir.mkdir()
    for name in ("bootcode.bin", "start4.elf", "kernel8.img", "bcm2711-rpi-4-b.dtb"):
        (boot_dir / name).write_bytes(b"\0" * 16)
    (boot_dir / "config.txt").write_text("[all]\narm_64bit=1\n")
    (boot_dir / "cmdline.txt").write_text(CMDLINE)
    return boot_dir


@pytest.fixture
def card(tmp_path: Path) -> Path:
    return boot_partition(tmp_path)


@pytest.fixture
def cluster_key(tmp_path: Path) -> Path:
    return keypair(tmp_path / "cluster_key", "cluster")


def contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


# The wheel of this picluster, built once for the module: prepare-boot is given it with
# --wheel (building it costs seconds), unless a test passes --wheel or --package itself.
WHEEL: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def this_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    WHEEL.append(build_wheel(tmp_path_factory.mktemp("wheel")))
    yield WHEEL[0]
    WHEEL.clear()


def prepare(card: Path, key: Path, *args: str, repo: str = "ssh://root@198.18.0.2/c.git"):
    chosen = {"--wheel", "--package"} & set(args)
    wheel = [] if chosen else ["--wheel", str(WHEEL[0])]
    return run_cli("prepare-boot", str(card), "--repo", repo, "--key", str(key), *wheel,
                   *args)


def one_line_error(done: subprocess.CompletedProcess[str], code: int, words: str) -> None:
    assert done.returncode == code, done
    assert done.stderr.startswith("picluster: ") and done.stderr.count("\n") == 1, done.stderr
    assert words in done.stderr


def public_of(key: Path) -> str:
    return subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True,
                          text=True, check=True).stdout.split()[1]


def node_settings(config: Path, tmp_path: Path, number: int = 1) -> Path:
    """Add to a prepared boot config what a node's own disk would settle, all under
    tmp_path (as the lab does), with a pinned identity."""
    with config.open("a") as file:
        file.write(f"home = {tmp_path / 'home'}\nuser_ssh_dir = {tmp_path / 'root-ssh'}\n"
                   f"etc_dir = {tmp_path / 'etc'}\nmac = {mac_of(number)}\n"
                   f"ip = {ip_of(number)}\npoll_interval = 0.5\nmaster_grace = 0\n")
    return config


# -- two programs for two machines -----------------------------------------------------------


@pytest.mark.parametrize("module", ["picluster.provision.card", "picluster.provision"])
def test_the_card_tool_loads_none_of_the_agents_dependencies(module: str) -> None:
    """prepare-boot runs on the operator's machine: importing it loads no agent."""
    done = subprocess.run([sys.executable, "-c",
                           f"import sys, {module}; print(*sorted(sys.modules))"],
                          capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    assert module in loaded
    assert not {name for name in loaded
                if name.split(".")[0] in ("huey", "apscheduler")
                or name == "picluster.node" or name.startswith("picluster.node.")}


# -- prepare-boot ------------------------------------------------------------------------


def test_prepare_boot_writes_a_card_that_boots_a_node(card: Path, cluster_key: Path) -> None:
    done = prepare(card, cluster_key, "--master", "--hostname", "pi-1")
    assert done.returncode == 0, done.stderr
    assert "cloud-init or firstrun" in done.stdout

    settings = Settings.load(card / "picluster.conf")
    assert settings.repo == "ssh://root@198.18.0.2/c.git"
    assert settings.master is True and settings.hostname == "pi-1"
    assert settings.ssh_key == card / KEY_NAME  # relative to the config
    key = card / KEY_NAME
    assert key.read_bytes() == cluster_key.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (card / f"{KEY_NAME}.pub").read_text().split()[1] == public_of(cluster_key)
    assert (card / "ssh").read_bytes() == b""  # enables sshd on Raspberry Pi OS

    user_data = card / "user-data"
    assert user_data.read_text().startswith("#cloud-config\n")
    assert yaml.safe_load(user_data.read_text())["runcmd"] == [RUNCMD]
    schema = subprocess.run(["cloud-init", "schema", "--config-file", str(user_data)],
                            capture_output=True, text=True, check=False)
    assert schema.returncode == 0, schema.stdout + schema.stderr

    firstboot = (card / "picluster-firstboot.sh").read_text()
    wheel = WHEEL[0]
    assert f"\nwheel={wheel.name}\n" in firstboot and "\npackage=''\n" in firstboot
    assert 'pip" install picluster' not in firstboot  # never a bare name from an index
    assert (card / WHEELS_DIR / wheel.name).read_bytes() == wheel.read_bytes()
    assert (card / WHEELS_DIR / SUMS).read_text() == f"{sha256(wheel)}  {wheel.name}\n"
    assert 'boot_dir/picluster.conf" boot' in firstboot
    assert (card / "cmdline.txt").read_text() == CMDLINE.rstrip("\n") + (
        f" systemd.run=/boot/firmware/{FIRSTRUN} systemd.run_success_action=reboot"
        " systemd.unit=kernel-command-line.target\n")
    for script in ("picluster-firstboot.sh", FIRSTRUN):
        assert os.access(card / script, os.X_OK)
        assert subprocess.run(["sh", "-n", str(card / script)], check=False).returncode == 0


def test_a_plain_node_config_names_no_master_and_no_hostname(card: Path,
                                                             cluster_key: Path) -> None:
    assert prepare(card, cluster_key, "--package", "picluster==1.0 ; true").returncode == 0
    settings = Settings.load(card / "picluster.conf")
    assert settings.master is False and settings.hostname is None
    firstboot = (card / "picluster-firstboot.sh").read_text()
    assert "\npackage='picluster==1.0 ; true'\n" in firstboot and "\nwheel=''\n" in firstboot
    assert not (card / WHEELS_DIR).exists()


def test_imager_user_data_keeps_its_settings_and_gains_one_runcmd(card: Path,
                                                                  cluster_key: Path) -> None:
    (card / "user-data").write_text(IMAGER_USER_DATA)
    assert prepare(card, cluster_key).returncode == 0
    assert prepare(card, cluster_key, "--force").returncode == 0  # no second runcmd
    merged = yaml.safe_load((card / "user-data").read_text())
    imager = yaml.safe_load(IMAGER_USER_DATA)
    assert merged["users"] == imager["users"] and merged["hostname"] == "pi-1"
    assert merged["runcmd"] == [*imager["runcmd"], RUNCMD]
    assert subprocess.run(["cloud-init", "schema", "--config-file", str(card / "user-data")],
                          capture_output=True, check=False).returncode == 0


def test_user_data_that_is_not_cloud_config_is_replaced_only_with_force(
        card: Path, cluster_key: Path) -> None:
    (card / "user-data").write_text("#!/bin/sh\necho mine\n")
    before = contents(card)
    one_line_error(prepare(card, cluster_key), 2, "pass --force to replace it")
    assert contents(card) == before
    assert prepare(card, cluster_key, "--force").returncode == 0
    assert yaml.safe_load((card / "user-data").read_text()) == {"runcmd": [RUNCMD]}


def test_an_image_with_a_cloud_init_seed_needs_no_firstrun(card: Path,
                                                          cluster_key: Path) -> None:
    (card / "meta-data").write_text("instance-id: pi\n")
    done = prepare(card, cluster_key)
    assert done.returncode == 0 and "through cloud-init)" in done.stdout
    assert (card / "cmdline.txt").read_text() == CMDLINE
    assert not (card / FIRSTRUN).exists()


def test_the_firstrun_hook_takes_the_place_of_imagers_and_is_added_once(
        card: Path, cluster_key: Path) -> None:
    imager = " systemd.run=/boot/firstrun.sh systemd.run_success_action=reboot " \
             "systemd.unit=kernel-command-line.target"
    (card / "cmdline.txt").write_text(CMDLINE.rstrip("\n") + imager + "\nsecond line\n")
    assert prepare(card, cluster_key, "--mount", "/boot").returncode == 0
    assert prepare(card, cluster_key, "--mount", "/boot", "--force").returncode == 0
    assert (card / "cmdline.txt").read_text() == CMDLINE.rstrip("\n") + (
        f" systemd.run=/boot/{FIRSTRUN} systemd.run_success_action=reboot"
        " systemd.unit=kernel-command-line.target\nsecond line\n")


def test_another_first_boot_command_is_not_replaced(card: Path, cluster_key: Path) -> None:
    (card / "cmdline.txt").write_text(CMDLINE.rstrip("\n") + " systemd.run=/boot/mine.sh\n")
    before = contents(card)
    one_line_error(prepare(card, cluster_key), 2, "already runs /boot/mine.sh")
    assert contents(card) == before


@pytest.mark.parametrize(("make", "words"), [
    (lambda tmp: tmp / "absent", "no such directory"),
    (lambda tmp: tmp, "does not look like a Raspberry Pi boot partition (no config.txt or "
                      "cmdline.txt)"),
])
def test_a_directory_that_is_no_boot_partition_is_refused(tmp_path: Path, cluster_key: Path,
                                                         make, words: str) -> None:
    target = make(tmp_path)
    before = sorted(tmp_path.iterdir())
    one_line_error(prepare(target, cluster_key), 2, words)
    assert sorted(tmp_path.iterdir()) == before


def test_force_writes_to_any_directory_without_touching_a_cmdline(tmp_path: Path,
                                                                  cluster_key: Path) -> None:
    target = tmp_path / "plain"
    target.mkdir()
    done = prepare(target, cluster_key, "--force")
    assert done.returncode == 0, done.stderr
    assert Settings.load(target / "picluster.conf").ssh_key == target / KEY_NAME
    assert not (target / FIRSTRUN).exists() and not (target / "cmdline.txt").exists()


def test_an_existing_config_is_kept_without_force(card: Path, cluster_key: Path) -> None:
    assert prepare(card, cluster_key, "--hostname", "pi-1").returncode == 0
    before = contents(card)
    one_line_error(prepare(card, cluster_key, "--hostname", "pi-2"), 2,
                   "picluster.conf exists; pass --force")
    assert contents(card) == before
    assert prepare(card, cluster_key, "--hostname", "pi-2", "--force").returncode == 0
    assert Settings.load(card / "picluster.conf").hostname == "pi-2"


def test_bad_keys_and_values_are_refused_before_anything_is_written(card: Path,
                                                                    tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    keypair(locked, passphrase="secret")
    not_a_key = tmp_path / "notes.txt"
    not_a_key.write_text("hello\n")
    before = contents(card)
    one_line_error(prepare(card, tmp_path / "absent"), 2, "No such file or directory")
    one_line_error(prepare(card, locked), 2, "not an OpenSSH private key without a passphrase")
    one_line_error(prepare(card, not_a_key), 2, "not an OpenSSH private key")
    one_line_error(prepare(card, keypair(tmp_path / "k"), "--hostname", "pi_1"), 2,
                   "not a host name")
    one_line_error(prepare(card, tmp_path / "k", "--mount", "boot"), 2, "absolute path")
    assert contents(card) == before


def test_a_failed_write_puts_back_what_was_there(card: Path, cluster_key: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (card / "user-data").write_text(IMAGER_USER_DATA)
    before = contents(card)
    real_install = card_module.install_file
    calls = []

    def failing_install(path: Path, data: bytes | str, **options: object) -> bool:
        calls.append(path.name)
        if path.name == "ssh":  # the last file: every other one was written
            raise OSError(28, "No space left on device", str(path))
        return real_install(path, data, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(card_module, "install_file", failing_install)
    with pytest.raises(BootError, match=r"No space left on device.*nothing was changed"):
        prepare_boot(card, repo="/x.git", key=cluster_key, wheel=WHEEL[0])
    assert {"picluster.conf", "user-data", "cmdline.txt", FIRSTRUN} <= set(calls)
    assert contents(card) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace")
def test_the_firstrun_hook_installs_the_first_boot_unit_and_leaves(card: Path,
                                                                   cluster_key: Path) -> None:
    """Run picluster-firstrun.sh as the Pi would, with /etc/systemd/system a tmpfs of a
    private mount namespace: this machine's own units are never touched."""
    (card / "firstrun.sh").write_text('touch "$(dirname "$0")/imager-ran"\n')
    assert prepare(card, cluster_key).returncode == 0
    script = f"""set -eu
mount -t tmpfs picluster-test /etc/systemd/system
mountpoint -q /etc/systemd/system
sh {card / FIRSTRUN}
test -L /etc/systemd/system/multi-user.target.wants/picluster-firstboot.service
systemd-analyze verify /etc/systemd/system/picluster-firstboot.service
cat /etc/systemd/system/picluster-firstboot.service
"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"ExecStart=/bin/sh {card}/picluster-firstboot.sh" in done.stdout
    assert done.stderr == ""  # systemd-analyze verify: clean
    assert (card / "cmdline.txt").read_text() == CMDLINE  # runs once
    assert (card / "imager-ran").exists() and not (card / "firstrun.sh").exists()


# -- the wheel on the card: exactly this picluster -------------------------------------------


def test_without_wheel_prepare_boot_builds_this_picluster_s_own(card: Path,
                                                                cluster_key: Path) -> None:
    done = run_cli("prepare-boot", str(card), "--repo", "/x.git", "--key", str(cluster_key))
    assert done.returncode == 0, done.stderr
    (wheel,) = (card / WHEELS_DIR).glob("*.whl")
    assert wheel.name == WHEEL[0].name
    with zipfile.ZipFile(wheel) as archive:
        shipped = archive.read(f"picluster/data/{FIRSTBOOT}")
        assert shipped == (ROOT / "picluster" / "data" / FIRSTBOOT).read_bytes()
        assert "picluster/playbooks/site.yml" in archive.namelist()
    assert (card / WHEELS_DIR / SUMS).read_text() == f"{sha256(wheel)}  {wheel.name}\n"
    assert f"installing {wheel.name} (" in done.stdout


def wheelhouse(directory: Path) -> Path:
    directory.mkdir()
    for name in ("huey-2.5.0-py3-none-any.whl", "PyYAML-6.0-cp311-cp311-manylinux_2_17_aarch64.whl",
                 "picluster-0.0.1-py3-none-any.whl"):  # another picluster: never taken
        (directory / name).write_bytes(name.encode())
    return directory


def test_a_wheelhouse_puts_every_dependency_on_the_card(card: Path, cluster_key: Path,
                                                        tmp_path: Path) -> None:
    done = prepare(card, cluster_key, "--wheelhouse", str(wheelhouse(tmp_path / "house")))
    assert done.returncode == 0, done.stderr
    names = [WHEEL[0].name, "PyYAML-6.0-cp311-cp311-manylinux_2_17_aarch64.whl",
             "huey-2.5.0-py3-none-any.whl"]
    assert sorted(path.name for path in (card / WHEELS_DIR).glob("*.whl")) == sorted(names)
    sums = (card / WHEELS_DIR / SUMS).read_text().splitlines()
    assert [line.split("  ")[1] for line in sums] == names  # picluster's first
    assert all(line.split()[0] == sha256(card / WHEELS_DIR / line.split()[1]) for line in sums)
    assert "\noffline=yes\n" in (card / FIRSTBOOT).read_text()
    assert "and 2 dependencies' wheels" in done.stdout

    # Prepared again without them: the card holds no wheel the new SHA256SUMS lacks.
    assert prepare(card, cluster_key, "--force").returncode == 0
    assert sorted(path.name for path in (card / WHEELS_DIR).iterdir()) == [SUMS, WHEEL[0].name]
    assert "\noffline=''\n" in (card / FIRSTBOOT).read_text()


def test_offline_downloads_the_dependencies_for_a_64_bit_pi(card: Path,
                                                           cluster_key: Path) -> None:
    done = prepare(card, cluster_key, "--offline")
    assert done.returncode == 0, done.stderr
    names = [path.name.lower() for path in (card / WHEELS_DIR).glob("*.whl")]
    for project in ("huey-", "gitpython-", "ansible_core-", "typer-", "apscheduler-"):
        assert any(name.startswith(project) for name in names), project
    built = [name for name in names if not name.endswith("-none-any.whl")]
    # cryptography is ansible-core's: a binary wheel, built for the Pi.
    assert any(name.startswith("cryptography-") for name in built)
    assert all("aarch64" in name for name in built), built  # the Pi's, not this machine's


def test_platform_tags_reach_back_from_debian_12_s_glibc() -> None:
    tags = platform_tags("aarch64")
    assert tags[0] == "manylinux_2_36_aarch64"
    assert {"manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64",
            "linux_aarch64"} <= set(tags)


def test_wheel_choices_that_contradict_each_other_are_refused(card: Path, cluster_key: Path,
                                                              tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.whl").write_bytes(b"")
    before = contents(card)
    for args, words in [
        (["--package", "picluster==1.0", "--offline"], "--package installs picluster"),
        (["--package", "picluster==1.0", "--wheel", str(WHEEL[0])], "cannot be combined"),
        (["--offline", "--wheelhouse", str(tmp_path)], "choose one"),
        (["--wheel", str(tmp_path / "other.whl")], "not a picluster wheel"),
        (["--wheelhouse", str(tmp_path / "absent")], "no such directory"),
        (["--wheelhouse", str(tmp_path / "empty")], "no wheels in it"),
    ]:
        one_line_error(prepare(card, cluster_key, *args), 2, words)
    assert contents(card) == before


def first_boot(card: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the card's picluster-firstboot.sh with apt-get, python3 and logger recorded
    instead of run (python3 -m venv stops the script: exit 42), and its venv and lock
    under tmp_path.  Returns the result and the recorded commands."""
    stubs, calls = tmp_path / "bin", tmp_path / "calls"
    stubs.mkdir(exist_ok=True)
    calls.write_text("")
    for name, code in (("apt-get", 42), ("logger", 0),
                       ("python3", '$([ "$1" = -c ] && echo 0 || echo 42)')):
        (stubs / name).write_text(f'#!/bin/sh\n[ "$1" = -c ] || echo "{name} $*" >> {calls}\n'
                                  f"exit {code}\n")
        (stubs / name).chmod(0o755)
    done = subprocess.run(["sh", str(card / FIRSTBOOT)], capture_output=True, text=True,
                          check=False, env={"PATH": f"{stubs}:/usr/bin:/bin",
                                            "PICLUSTER_VENV": str(tmp_path / "venv"),
                                            "PICLUSTER_FIRSTBOOT_LOCK": str(tmp_path / "lock")})
    return done, calls.read_text().splitlines()


def test_first_boot_installs_the_wheel_it_checked(card: Path, cluster_key: Path,
                                                  tmp_path: Path) -> None:
    assert prepare(card, cluster_key).returncode == 0
    done, calls = first_boot(card, tmp_path)
    assert done.returncode == 42, done.stderr
    assert calls == [f"python3 -m venv {tmp_path / 'venv'}"]  # checked, then installing
    script = (card / FIRSTBOOT).read_text()
    assert '"file://$wheels/$wheel#sha256=$sum"' in script  # pip checks the hash again


@pytest.mark.parametrize(("damage", "words"), [
    (lambda wheels: wheels.joinpath(WHEEL[0].name).open("ab").write(b"\0"),
     "picluster-wheels/{wheel} does not match its sha256 in SHA256SUMS"),
    (lambda wheels: wheels.joinpath("evil-1.0-py3-none-any.whl").write_bytes(b"x"),
     "evil-1.0-py3-none-any.whl is not in"),
    (lambda wheels: wheels.joinpath(SUMS).unlink(), "SHA256SUMS: this card holds no"),
])
def test_a_tampered_card_stops_first_boot_with_one_line_and_installs_nothing(
        card: Path, cluster_key: Path, tmp_path: Path, damage, words: str) -> None:
    assert prepare(card, cluster_key).returncode == 0
    damage(card / WHEELS_DIR)
    done, calls = first_boot(card, tmp_path)
    assert done.returncode == 1
    assert len(calls) == 1 and calls[0].startswith(
        "logger -p user.err -t picluster-firstboot -- "), calls  # one line in the journal
    assert words.format(wheel=WHEEL[0].name) in calls[0]
    assert calls[0].endswith("nothing was installed")
    assert not (tmp_path / "venv").exists()


# -- the service and the seed's shims ---------------------------------------------------------


def test_the_unit_verifies_and_the_repository_root_holds_the_package_copy() -> None:
    unit = ROOT / "picluster.service"
    assert unit.read_text() == firstboot.unit_text()
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = unit.read_text()
    for line in ("KillSignal=SIGINT", "KillMode=mixed", "Restart=always",
                 "After=network-online.target", "WantedBy=multi-user.target"):
        assert f"\n{line}\n" in text
    assert "TimeoutStopSec=10min" in text and "/opt/picluster/bin:" in text


@pytest.mark.parametrize(("shim", "command"), [("service.sh", "boot --foreground"),
                                               ("ip2file.sh", "register"),
                                               ("up2git.sh", "register")])
def test_the_seed_entry_points_are_shims_over_the_cli(shim: str, command: str) -> None:
    path = ROOT / shim
    assert os.access(path, os.X_OK)
    assert f'exec picluster "$@" {command}\n' in path.read_text()
    assert subprocess.run(["sh", "-n", str(path)], check=False).returncode == 0


# -- boot, step by step -----------------------------------------------------------------------


def test_keys_are_installed_as_the_identity_and_authorized_once(tmp_path: Path,
                                                                cluster_key: Path) -> None:
    # As on a FAT boot partition: every file readable by all, which ssh refuses to use.
    shutil.copyfile(cluster_key, tmp_path / "fat_key")
    (tmp_path / "fat_key").chmod(0o755)
    ssh_dir = tmp_path / "root" / ".ssh"
    ssh_dir.mkdir(parents=True)
    (ssh_dir / "authorized_keys").write_text("ssh-ed25519 AAAAother someone\n")
    settings = Settings.parse(f"repo = /x\nssh_key = fat_key\nuser_ssh_dir = {ssh_dir}\n",
                              tmp_path / "picluster.conf")
    identity = install_keys(settings)
    again = install_keys(settings)

    assert identity == again == ssh_dir / "id_ed25519"
    assert identity.read_bytes() == cluster_key.read_bytes()
    assert stat.S_IMODE(identity.stat().st_mode) == 0o600
    assert (ssh_dir / "id_ed25519.pub").read_text().split()[1] == public_of(cluster_key)
    lines = settings.authorized_keys.read_text().splitlines()
    assert lines[0] == "ssh-ed25519 AAAAother someone"
    assert [line.split()[1] for line in lines[1:]] == [public_of(cluster_key)]
    assert stat.S_IMODE(settings.authorized_keys.stat().st_mode) == 0o600
    assert subprocess.run(["ssh-keygen", "-y", "-f", str(identity)], capture_output=True,
                          check=False).returncode == 0  # ssh accepts its modes


@pytest.mark.parametrize(("text", "words"), [
    ("repo = /x\n", "ssh_key: not set"),
    ("repo = /x\nssh_key = absent\n", "No such file or directory"),
    ("repo = /x\nssh_key = k\nuser = no-such-user-here\n", "no account 'no-such-user-here'"),
])
def test_keys_that_cannot_be_installed_say_why(tmp_path: Path, cluster_key: Path, text: str,
                                               words: str) -> None:
    shutil.copyfile(cluster_key, tmp_path / "k")
    settings = Settings.parse(text + f"user_ssh_dir = {tmp_path / 'ssh'}\n",
                              tmp_path / "picluster.conf")
    with pytest.raises(BootError, match=words):
        install_keys(settings)
    assert not (tmp_path / "ssh" / "authorized_keys").exists()


def test_hosts_names_the_host_on_debians_line() -> None:
    text = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n127.0.1.1\traspberrypi\n"
    assert hosts_text(text, "pi-3") == \
        "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost\n127.0.1.1\tpi-3\n"
    assert hosts_text("127.0.0.1 localhost\n", "pi-3").endswith("\n127.0.1.1\tpi-3\n")


class FakeSystem:
    """systemd as PID 1, with systemctl and hostnamectl recorded instead of run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[list[str]] = []
        real_run = firstboot.run

        def run(*argv: str) -> str:
            if argv[0] in ("systemctl", "hostnamectl"):
                self.commands.append(list(argv))
                return ""
            return real_run(*argv)

        monkeypatch.setattr(firstboot, "run", run)
        monkeypatch.setattr(firstboot, "systemd_running", lambda: True)


def test_the_hostname_changes_only_where_systemd_runs(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    here = Settings.parse(f"repo = /x\nhostname = {socket.gethostname()}\n"
                          f"etc_dir = {tmp_path}\n", tmp_path / "c.conf")
    other = here.replace(hostname="pi-77")
    assert set_hostname(here) is False and set_hostname(other) is False  # no systemd here
    assert not (tmp_path / "hosts").exists()

    system = FakeSystem(monkeypatch)
    assert set_hostname(here) is False  # already so
    assert set_hostname(other) is True
    assert system.commands == [["hostnamectl", "set-hostname", "pi-77"]]
    assert (tmp_path / "hosts").read_text().endswith("127.0.1.1\tpi-77\n")


def test_a_node_without_a_name_is_named_after_its_mac(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.parse(f"repo = /x\nmac = b8:27:eb:12:34:56\netc_dir = {tmp_path}\n",
                              tmp_path / "c.conf")
    assert default_hostname("b827eb123456") == "pi-123456"
    system = FakeSystem(monkeypatch)
    monkeypatch.setattr(firstboot.socket, "gethostname", lambda: "raspberrypi")
    assert set_hostname(settings) is True  # never the image's shared name
    assert system.commands == [["hostnamectl", "set-hostname", "pi-123456"]]
    system.commands.clear()
    monkeypatch.setattr(firstboot.socket, "gethostname", lambda: "kitchen")
    assert set_hostname(settings) is False  # named by its owner: theirs to keep
    assert system.commands == []


def test_boot_under_systemd_joins_then_enables_the_service(
        card: Path, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert prepare(card, cluster.operator_key, repo=str(cluster.bare)).returncode == 0
    settings = Settings.load(node_settings(card / "picluster.conf", tmp_path))
    system = FakeSystem(monkeypatch)

    boot(settings, timeout=30)
    snapshot = cluster.snapshot()
    assert snapshot.read(layout.ip_path(mac_of(1))) == f"{ip_of(1)}\n"
    assert snapshot.read(layout.MASTER) == f"{mac_of(1)}\n"
    node_facts = yaml.safe_load(snapshot.read(layout.facts_path(mac_of(1))) or "")
    assert {"hostname", "cores", "model", "host_key"} <= set(node_facts)
    units = tmp_path / "etc" / "systemd" / "system"
    assert (units / UNIT).read_text() == firstboot.unit_text()
    dropin = (units / f"{UNIT}.d" / "boot.conf").read_text()
    assert f'Environment="PICLUSTER_CONFIG={card / "picluster.conf"}"' in dropin
    assert "User=" not in dropin
    assert system.commands == [["systemctl", "daemon-reload"],
                               ["systemctl", "try-restart", UNIT],
                               ["systemctl", "enable", "--now", UNIT]]

    system.commands.clear()
    boot(settings, timeout=30)  # at the next boot: nothing to change
    assert system.commands == [["systemctl", "enable", "--now", UNIT]]
    assert len(cluster.operator_repo().log(layout.ip_path(mac_of(1)))) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand files to another user")
def test_a_configured_user_owns_the_keys_and_the_state_and_runs_the_service(
        card: Path, cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert prepare(card, cluster.operator_key, repo=str(cluster.bare)).returncode == 0
    config = node_settings(card / "picluster.conf", tmp_path)
    with config.open("a") as file:
        file.write("user = nobody\n")
    FakeSystem(monkeypatch)
    boot(Settings.load(config), timeout=30)

    nobody = pwd.getpwnam("nobody").pw_uid
    for path in (tmp_path / "root-ssh" / "id_ed25519", tmp_path / "root-ssh" / "authorized_keys",
                 tmp_path / "home", tmp_path / "home" / "repo" / "HEAD"):
        assert path.stat().st_uid == nobody, path
    dropin = tmp_path / "etc" / "systemd" / "system" / f"{UNIT}.d" / "boot.conf"
    assert "\nUser=nobody\n" in dropin.read_text()


def test_boot_gives_up_on_an_unreachable_repository_with_one_line(
        card: Path, cluster_key: Path, tmp_path: Path) -> None:
    assert prepare(card, cluster_key, repo=str(tmp_path / "nowhere.git")).returncode == 0
    config = node_settings(card / "picluster.conf", tmp_path)
    done = run_cli("boot", "--foreground", "--timeout", "2", config=config)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("picluster: cannot join the cluster at ") and "nowhere.git" in last
    assert "retrying in" in done.stderr  # it did retry first
    assert not (tmp_path / "home" / "repo").exists()  # no half-made clone
    assert (tmp_path / "root-ssh" / "id_ed25519").exists()  # the done steps stay done


def test_a_prepared_card_boots_into_a_running_agent(card: Path, cluster: Cluster,
                                                    tmp_path: Path) -> None:
    assert prepare(card, cluster.operator_key, "--hostname", socket.gethostname(),
                   repo=str(cluster.bare)).returncode == 0
    config = node_settings(card / "picluster.conf", tmp_path)
    agent = cluster.start_agent(config, "boot", "--foreground")
    try:
        wait_until(lambda: cluster.snapshot().read(layout.ip_path(mac_of(1))), 60,
                   "the node to register")
        done = run_cli("enqueue", mac_of(1), "echo", "--arg", "msg=booted", "--wait", "30",
                       config=cluster.operator_config())
        assert done.returncode == 0, (done.stderr, config.with_suffix(".log").read_text())
        assert '"msg": "booted"' in done.stdout
    finally:
        agent.send_signal(signal.SIGINT)
        assert agent.wait(timeout=30) == 0


# -- the lab: a node booted from nothing but a prepared boot partition ------------------------


def test_lab_settings_keep_a_node_on_its_own_disk(tmp_path: Path) -> None:
    node = Lab(tmp_path)._node(3)
    settings = Settings.parse("repo = /x\n" + render_lab_settings(node, extra={}))
    for path in (settings.home, settings.authorized_keys, settings.etc_dir):
        assert path.is_relative_to(node.dir)


@pytest.mark.lab
def test_a_card_from_prepare_boot_joins_a_running_lab(fresh_lab: Lab, tmp_path: Path) -> None:
    fresh_lab.up(2, fast=True, timeout=120)
    card = boot_partition(tmp_path)
    done = prepare(card, fresh_lab.cluster_key, "--hostname", "pi-3",
                   repo=fresh_lab.state().repo)
    assert done.returncode == 0, done.stderr

    node = fresh_lab.add_node(card, timeout=60)
    assert node.name == "pi-3"
    status = status_of(fresh_lab, "pi-3")
    assert status.registered and status.agent
    settings = node.settings()
    assert public_of(fresh_lab.cluster_key) in settings.authorized_keys.read_text()
    assert (settings.user_ssh_dir / "id_ed25519").exists()  # type: ignore[operator]

    # The master reaches the new node through the key boot installed: MPI runs there.
    wait_until(lambda: status_of(fresh_lab, "pi-3").in_hostfile, 60,
               "the master to put pi-3 in its hostfile")
    ranks = fresh_lab.mpirun(["-np", "3", "--map-by", "node", "hostname"],
                             capture_output=True, text=True, timeout=60)
    assert ranks.returncode == 0, ranks.stderr
    assert sorted(ranks.stdout.split()) == ["pi-1", "pi-2", "pi-3"]
