import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import git as gitpython
import pytest
from helpers import Cluster

from picluster.gitstore import (
    ClusterRepo,
    Create,
    GitError,
    Put,
    Remove,
    Snapshot,
    inbox,
    init_bare,
)
from picluster.gitstore import clone as clone_module
from picluster.gitstore.errors import RemoteMoved, push_error


def clone(cluster: Cluster, name: str, **options: Any) -> ClusterRepo:
    """Writer `name`'s clone under cluster.root/name; `options` go to ClusterRepo."""
    return ClusterRepo(str(cluster.bare), cluster.root / name / "repo", writer=name, **options)


def git(bare: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(bare), *args], capture_output=True,
                          text=True, check=True).stdout


def advance(cluster: Cluster, commits: int) -> None:
    """Move main forward by `commits` commits, each writing a new `writer` file, as
    another clone pushing them would (one fast-import into the bare repository: fast)."""
    stamp = f"t <t@t> {int(time.time())} +0000"
    stream = f"reset refs/heads/main\nfrom {git(cluster.bare, 'rev-parse', 'main').strip()}\n\n"
    for n in range(commits):
        content = f"{time.time_ns()} {n}\n"
        stream += (f"commit refs/heads/main\ncommitter {stamp}\ndata 7\nadvance\n"
                   f"M 100644 inline writer\ndata {len(content)}\n{content}\n")
    subprocess.run(["git", "--git-dir", str(cluster.bare), "fast-import", "--quiet"],
                   input=stream, text=True, check=True)


def test_ops_apply_and_a_no_op_makes_no_commit(cluster: Cluster) -> None:
    repo = clone(cluster, "a")
    first = repo.transact([Put("ip/b827eb000001", "198.18.0.2\n"),
                           Create("master", "b827eb000001\n")], "register")
    assert first.commit and first.changed == ("ip/b827eb000001", "master")
    again = repo.transact([Put("ip/b827eb000001", "198.18.0.2\n"),
                           Create("master", "b827eb000002\n")], "register again")
    assert again.commit is None and again.attempts == 0
    snap = repo.sync()
    assert snap.read("master") == "b827eb000001\n"  # Create never overwrites
    assert repo.transact([Remove("ip/b827eb000001", expect="other\n")], "x").commit is None
    assert repo.transact([Remove("ip/b827eb000001", expect="198.18.0.2\n")], "x").commit
    assert repo.sync().read("ip/b827eb000001") is None


def test_compare_and_set_reapplies_the_change_on_the_new_tip(cluster: Cluster) -> None:
    repo, other = clone(cluster, "a"), clone(cluster, "b")
    calls = []

    def increment(snapshot: Snapshot) -> list[Put]:
        calls.append(snapshot.commit)
        if len(calls) == 1:  # someone else moves main between our fetch and our push
            other.transact(lambda s: [Put("counter", "10\n")], "other writer")
        return [Put("counter", f"{int(snapshot.read('counter') or '0') + 1}\n")]

    result = repo.transact(increment, "increment")
    assert len(calls) == 2 and calls[0] != calls[1]
    assert result.attempts == 2
    assert repo.sync().read("counter") == "11\n"


def test_concurrent_writers_all_land_and_each_carries_few(cluster: Cluster) -> None:
    repos = [clone(cluster, f"w{i}") for i in range(8)]
    for repo in repos:
        repo.sync()
    results = {}

    def write(i: int) -> None:
        results[i] = repos[i].transact([Put(f"ip/w{i}", f"{i}\n"), Create("master", f"{i}\n")],
                                       f"register w{i}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = repos[0].sync()
    assert {f"w{i}" for i in range(8)} <= set(snap.listdir("ip"))
    assert snap.read("master") in {f"{i}\n" for i in range(8)}
    assert sum(r.attempts for r in results.values()) <= 2 * 8
    assert git(cluster.bare, "for-each-ref", "refs/picluster") == ""  # inbox drained


def test_the_first_in_line_carries_at_once_unless_a_storm_is_on() -> None:
    quiet, patience, stagger = inbox._QUIET, inbox._PATIENCE, inbox._STAGGER
    storm = inbox._STORM
    assert inbox._my_turn(0, 1, still=0.0, waited=0.0)  # alone: nobody carries for it
    assert inbox._my_turn(0, storm - 1, still=0.0, waited=0.0)
    # In a storm a carrier may be at work: the first in line waits for main to go quiet.
    assert not inbox._my_turn(0, storm, still=quiet - 0.1, waited=0.0)
    assert inbox._my_turn(0, storm, still=quiet, waited=0.0)
    # Behind it, writers take over one at a time while main stands still.
    assert not inbox._my_turn(1, 2, still=60.0, waited=patience)
    assert inbox._my_turn(1, 2, still=60.0, waited=patience + stagger)
    assert not inbox._my_turn(3, 5, still=60.0, waited=patience + 2 * stagger)
    assert inbox._my_turn(3, 5, still=60.0, waited=patience + 3 * stagger)


def test_a_writer_behind_a_dead_one_carries_both_once_patience_runs_out(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox, "_PATIENCE", 0.5)
    _push_intent(cluster, "dead", 'intent: x\n\n{"message": "late register", "ops": '
                 '[{"op": "put", "path": "ip/dead", "content": "1\\n"}]}',
                 int(time.time() * 1000) - 1000)
    started = time.monotonic()
    result = clone(cluster, "a").transact([Put("ip/a", "2\n")], "register a")
    assert time.monotonic() - started >= 0.5 + inbox._STAGGER  # it waited its turn
    assert result.carried == 1
    snap = clone(cluster, "b").sync()
    assert snap.read("ip/dead") == "1\n" and snap.read("ip/a") == "2\n"
    assert git(cluster.bare, "for-each-ref", "refs/picluster") == ""


def test_a_writer_that_loses_the_race_for_main_waits_for_the_winner(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    loser, winner = clone(cluster, "loser"), clone(cluster, "winner")
    winner.sync()
    real_land, raced = inbox.land, []

    def land(carrier: Any, tip: str, *args: Any) -> str | None:
        if carrier.writer == "loser" and not raced:  # the winner pushes main first
            other = winner._clone
            _, intents = inbox.pending(other, time.monotonic() + 10)
            raced.append(real_land(other, other.fetch([i.ref for i in intents]), (), "",
                                   intents))
        return real_land(carrier, tip, *args)

    monkeypatch.setattr(inbox, "land", land)
    result = loser.transact([Put("ip/loser", "1\n")], "register loser")
    assert raced and raced[0]  # the winner carried the loser's intent
    assert result.attempts == 2 and result.carried == 0  # its intent, one lost push
    assert result.commit == raced[0]
    assert loser.snapshot().read("ip/loser") == "1\n"
    assert git(cluster.bare, "for-each-ref", "refs/picluster") == ""


def _push_intent(cluster: Cluster, name: str, body: str, stamp: int) -> None:
    work = cluster.root / "intent-maker"
    if not work.exists():
        subprocess.run(["git", "clone", "-q", str(cluster.bare), str(work)], check=True)
    env = ["-c", "user.name=t", "-c", "user.email=t@t"]
    sha = subprocess.run(["git", "-C", str(work), *env, "commit-tree",
                          "4b825dc642cb6eb9a060e54bf8d69288fbee4904", "-m", body],
                         capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin",
                    f"{sha}:refs/picluster/inbox/{stamp:015d}-{name}-00000000"], check=True)


def test_an_orphaned_intent_is_carried_and_a_malformed_one_dropped(cluster: Cluster) -> None:
    _push_intent(cluster, "dead", 'intent: x\n\n{"message": "late register", "ops": '
                 '[{"op": "put", "path": "ip/dead", "content": "1\\n"}]}', 1000)
    _push_intent(cluster, "junk", "intent: junk\n\nnot json", 1001)
    result = clone(cluster, "a").carry_orphans()
    assert result.commit and result.carried == 2
    snap = clone(cluster, "b").sync()
    assert snap.read("ip/dead") == "1\n"
    assert git(cluster.bare, "for-each-ref", "refs/picluster") == ""


def test_a_broken_clone_is_moved_aside_and_recloned(cluster: Cluster) -> None:
    repo = clone(cluster, "a")
    repo.transact([Put("x", "1\n")], "x")
    (repo.clone_dir / "HEAD").write_text("garbage\n")
    fresh = clone(cluster, "a")
    assert fresh.sync().read("x") == "1\n"
    assert (repo.clone_dir.parent / "repo.broken").is_dir()


def test_unreachable_remote_is_a_clear_error(tmp_path: Path) -> None:
    repo = ClusterRepo(str(tmp_path / "nowhere.git"), tmp_path / "c", writer="a")
    with pytest.raises(GitError, match="cannot clone"):
        repo.sync()


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", ".git/config", "a/../b", "a//b", ""])
def test_ops_refuse_paths_outside_the_tree(path: str) -> None:
    with pytest.raises(ValueError, match="plain relative path"):
        Put(path, "x")


def test_any_name_git_holds_is_read_and_removed(cluster: Cluster) -> None:
    repo = clone(cluster, "a")
    names = ["a\\b", "new\nline", "tab\there", "\udcff\udcfe"]  # the last: not UTF-8
    repo.transact([Put(f"q/{name}", f"{n}\n") for n, name in enumerate(names)], "odd names")
    snap = repo.sync()
    assert sorted(snap.listdir("q")) == sorted(names)
    assert [snap.read(f"q/{name}") for name in names] == ["0\n", "1\n", "2\n", "3\n"]
    repo.transact([Remove(f"q/{name}") for name in names], "gone")
    assert repo.sync().listdir("q") == []
    with pytest.raises(ValueError, match="not a name git can hold"):
        Put("q/\ud800", "x")


def test_a_missing_branch_fails_at_once_naming_it(cluster: Cluster) -> None:
    repo = clone(cluster, "a", branch="nope", deadline=60)
    started = time.monotonic()
    with pytest.raises(GitError, match="has no branch 'nope'; check `branch`"):
        repo.transact([Put("x", "1\n")], "x")
    assert time.monotonic() - started < 10  # not retried until the deadline


def test_a_rewound_branch_is_told_once(cluster: Cluster) -> None:
    repo, told = clone(cluster, "a"), []
    repo.on_rewind(lambda seen, tip: told.append((seen, tip)))
    first = repo.transact([Put("x", "1\n")], "x").commit
    second = repo.transact([Put("x", "2\n")], "x again").commit
    repo.sync()
    assert told == []  # forward only
    git(cluster.bare, "update-ref", "refs/heads/main", str(first))
    assert repo.sync().read("x") == "1\n"
    assert told == [(second, first)]
    repo.sync()
    assert told == [(second, first)]


def test_a_shallow_clone_sees_main_advanced_by_several_commits_as_no_rewind(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    repo, other, told = clone(cluster, "a", shallow=True), clone(cluster, "b"), []
    repo.on_rewind(lambda seen, tip: told.append((seen, tip)))
    repo.sync()
    for n in range(5):  # the shallow clone fetches none of these one by one
        other.transact(lambda tip, n=n: [Put("x", f"{n}\n")], f"x {n}")
    assert repo.sync().read("x") == "4\n"
    assert told == [] and "REWOUND" not in caplog.text


def test_a_shallow_clone_still_tells_a_force_push_to_a_divergent_or_older_commit(
        cluster: Cluster) -> None:
    writer = clone(cluster, "writer")
    older = [writer.transact(lambda tip, n=n: [Put("x", f"{n}\n")], f"x {n}").commit
             for n in range(3)]
    repo, told = clone(cluster, "a", shallow=True), []
    repo.on_rewind(lambda seen, tip: told.append((seen, tip)))
    assert repo.sync().commit == older[2]  # the only commit the clone holds
    # A sibling of the tip, on a parent older than the clone's history.
    divergent = git(cluster.bare, "-c", "user.name=t", "-c", "user.email=t@t", "commit-tree",
                    f"{older[1]}^{{tree}}", "-p", str(older[1]), "-m", "divergent").strip()
    git(cluster.bare, "update-ref", "refs/heads/main", divergent)
    assert repo.sync().commit == divergent
    git(cluster.bare, "update-ref", "refs/heads/main", str(older[0]))
    assert repo.sync().read("x") == "0\n"
    repo.sync()
    assert told == [(older[2], divergent), (divergent, older[0])]


def test_a_shallow_clone_holds_only_the_commits_since_it_was_last_cut_back(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clone_module, "_RECUT_EVERY", 4)
    repo = clone(cluster, "a", shallow=True)
    repo.sync()
    git(repo.clone_dir, "config", "gc.autoPackLimit", "4")  # a fetch's gc every few fetches

    def reachable() -> int:
        return len(git(repo.clone_dir, "rev-list", "--objects", "--all").splitlines())

    def stored() -> dict[str, int]:
        lines = git(repo.clone_dir, "count-objects", "-v").splitlines()
        return {key: int(value) for key, value in (line.split(": ") for line in lines)}

    tip_alone = reachable()  # a --depth 1 clone: the tip's commit and tree
    for _ in range(15):
        advance(cluster, 3)
        repo.sync()
        commits = int(git(repo.clone_dir, "rev-list", "--count", "origin/main"))
        assert commits <= 4 * 3 + 1  # main's commits over the last 4 fetches, on the cut
        # Each commit on the cut adds itself, a root tree and a `writer` blob; the cut
        # holds one `writer` blob more than the seed.
        assert reachable() <= tip_alone + 1 + 3 * (commits - 1)
    # What the cuts dropped waits out gc's grace period in a pack, not a file per object.
    assert stored()["count"] == 0
    # Nothing else holds on to it: gc without a grace period drops it all.
    git(repo.clone_dir, "gc", "--quiet", "--prune=now")
    assert stored()["count"] + stored()["in-pack"] == reachable()


def test_snapshot_tells_plain_files_from_symlinks(cluster: Cluster) -> None:
    work = cluster.root / "w"
    subprocess.run(["git", "clone", "-q", str(cluster.bare), str(work)], check=True)
    (work / "queue" / "link.json").symlink_to("/etc/passwd")
    (work / "queue" / "plain.json").write_text("{}")
    subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-qm", "x"], check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q"], check=True)
    snap = clone(cluster, "a").sync()
    assert snap.is_regular_file("queue/plain.json")
    assert not snap.is_regular_file("queue/link.json")
    assert snap.listdir("queue", files=True) == [".gitkeep", "link.json", "plain.json"]
    assert snap.read("nope") is None and snap.listdir("nope") == []


def test_init_bare_refuses_a_repository_with_branches(cluster: Cluster) -> None:
    with pytest.raises(GitError, match="already has branches"):
        init_bare(cluster.bare, {"a": "b"}, "again")


def test_a_push_the_remote_declines_fails_at_once(cluster: Cluster) -> None:
    hook = cluster.bare / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'read-only cluster' >&2\nexit 1\n")
    hook.chmod(0o755)
    repo = clone(cluster, "a", deadline=60)
    started = time.monotonic()
    with pytest.raises(GitError, match="cannot push") as refused:
        repo.transact(lambda _: [Put("x", "1\n")], "declined")
    assert time.monotonic() - started < 10  # not retried until the deadline
    assert "pre-receive hook declined (read-only cluster)" in str(refused.value)


def _push_failed(status: str, stderr: str = "") -> RemoteMoved | GitError:
    """What push_error makes of a `git push --porcelain` that printed `status`."""
    stderr = stderr or "error: failed to push some refs to '/srv/cluster.git'"
    error = gitpython.GitCommandError(["git", "push"], 1, stderr.encode(),
                                      f"To /srv/cluster.git\n{status}\nDone".encode())
    return push_error("/srv/cluster.git", error)


@pytest.mark.parametrize("status", [
    "!\tabc:refs/heads/main\t[rejected] (fetch first)\n"
    "!\t(delete):refs/picluster/inbox/1-a\t[rejected] (stale info)",
    "!\tabc:refs/heads/main\t[rejected] (non-fast-forward)\n"
    "!\t(delete):refs/picluster/inbox/1-a\t[rejected] (atomic push failed)",
    "!\tabc:refs/heads/main\t[remote rejected] (atomic transaction failed)\n"
    "!\t:refs/picluster/inbox/1-a\t[remote rejected] (atomic transaction failed)",
    "!\tabc:refs/picluster/inbox/1-a\t[remote rejected] (failed to update ref)",
])
def test_a_push_refused_because_the_remote_moved_is_worth_another_try(status: str) -> None:
    assert isinstance(_push_failed(status), RemoteMoved)


@pytest.mark.parametrize(("status", "stderr", "said"), [
    ("!\tabc:refs/heads/main\t[remote rejected] (pre-receive hook declined)\n"
     "!\t:refs/picluster/inbox/1-a\t[remote rejected] (pre-receive hook declined)",
     "remote: read-only cluster        \nerror: failed to push some refs to 'x'",
     "refs/heads/main: pre-receive hook declined; refs/picluster/inbox/1-a: pre-receive "
     "hook declined (read-only cluster)"),
    ("!\tabc:refs/heads/main\t[remote rejected] (hook declined)\n"
     "!\t:refs/picluster/inbox/1-a\t[remote rejected] (atomic push failure)", "",
     "refs/heads/main: hook declined"),
    ("!\tabc:refs/heads/main\t[remote rejected] (protected branch hook declined)\n"
     "!\t(delete):refs/picluster/inbox/1-a\t[rejected] (stale info)",
     "remote: error: GH006: Protected branch update failed for refs/heads/main.",
     "protected branch hook declined; refs/picluster/inbox/1-a: stale info (error: GH006"),
    ("", "ERROR: Permission to pi/cluster.git denied to node.\n"
     "fatal: Could not read from remote repository.\n\nPlease make sure you have the "
     "correct access rights", "fatal: Could not read from remote repository."),
])
def test_a_push_the_remote_refuses_fails_in_its_own_words(status: str, stderr: str,
                                                          said: str) -> None:
    error = _push_failed(status, stderr)
    assert isinstance(error, GitError)
    assert str(error).startswith("cannot push to /srv/cluster.git: ") and said in str(error)


def test_every_git_process_runs_in_the_c_locale(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # picluster reads what git says: a translated git must not change what it means.
    seen, wrapper = tmp_path / "seen", tmp_path / "bin" / "git"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$1 LC_ALL=${{LC_ALL-unset}} '
                       f'LANGUAGE=${{LANGUAGE-unset}}" >> {seen}\n'
                       f'exec {shutil.which("git")} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    monkeypatch.setenv("LANGUAGE", "de")
    init_bare(tmp_path / "cluster.git", {"a": "1\n"}, "init")
    repo = ClusterRepo(str(tmp_path / "cluster.git"), tmp_path / "clone", writer="a")
    assert repo.transact([Put("b", "1\n")], "through the inbox").commit
    assert repo.transact(lambda _: [Put("c", "1\n")], "compare-and-set").commit
    runs = seen.read_text().splitlines()
    assert {"init", "commit", "fetch", "ls-remote", "fast-import", "push"} <= \
        {run.split()[0] for run in runs}
    assert all(run.endswith(" LC_ALL=C LANGUAGE=") for run in runs), runs
