"""The inbox: ops published as intents that whoever pushes main next carries into it.

A list of ops is first published as an *intent* on a ref of its own,
``refs/picluster/inbox/<id>``: a push nobody else contends for.  Whoever pushes main
next carries every pending intent into its commit and deletes the carried refs in the
same atomic push.  Writers therefore help each other instead of fighting for the tip: a
storm of N registrations costs about N + a few pushes, not N².  The first intent's writer
carries, the others wait for it (`_my_turn`); in a storm, one carrier takes everything
pending in each push.

Readers of main see only the cluster's files; intents never reach main as such.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from picluster.bounded import load_json
from picluster.gitstore.clone import Clone
from picluster.gitstore.errors import GitError, RemoteMoved
from picluster.gitstore.ops import Files, Op, affected, decode_ops, encode_ops
from picluster.retry import backoffs

__all__ = ["INBOX", "Intent", "TransactResult", "carry_orphans", "land", "pending", "submit"]

log = logging.getLogger(__name__)

INBOX = "refs/picluster/inbox"
# This many intents pending at once make a storm: writers then wait for one carrier.
_STORM = 8
# An intent older than this whose writer has not carried it is an orphan (its writer
# died): the agents' polls carry it (any carrier takes it along anyway).
_ORPHAN_AFTER = 10.0
# In a storm (`_STORM` intents or more pending) the first writer in the inbox carries
# once main has stood still this long: a carrier at work pushes main about as often (each
# push carries all that is pending), so a second carrier rarely joins one at work, and if
# it does, the loser of the race steps back.  While fewer wait, it carries at once.
_QUIET = 0.5
# A writer further back carries itself once main has not moved for this long, plus a
# little more per writer ahead of it: the carrier stalled or died, and its successors
# take over one at a time, in inbox order, instead of all at once.
_PATIENCE = 5.0
_STAGGER = 0.5
# After its own intent landed, a carrier goes on carrying newcomers this long at most:
# long enough to carry a storm in a few handovers, short enough that its caller (a
# registration, a task outcome) is not held up for long.
_DRAIN = 5.0
# A carrier that carried `_STORM` others at once waits `_GATHER` before its next push,
# so that one push takes a batch of newcomers rather than a few each.
_GATHER = 0.2
# An intent's ops, as JSON: far more than a batch of outcomes (about 4 MiB) ever needs.
_MAX_INTENT = 64 << 20


@dataclass(frozen=True)
class TransactResult:
    """What a transaction did: the commit it landed in (None: nothing to change)."""

    commit: str | None
    attempts: int = 0  # pushes this writer made (intent ref + main)
    carried: int = 0  # other writers' intents this writer carried into main
    changed: tuple[str, ...] = ()  # paths this writer's own ops change


@dataclass(frozen=True, order=True)
class Intent:
    """A pending change on its own inbox ref."""

    ref: str
    sha: str
    created: float  # epoch seconds, from the ref's name

    @classmethod
    def named(cls, ref: str, sha: str) -> Intent:
        stamp = ref.rsplit("/", 1)[-1].split("-", 1)[0]
        return cls(ref, sha, int(stamp) / 1000 if stamp.isdigit() else 0.0)

    @property
    def age(self) -> float:
        return time.time() - self.created


def pending(clone: Clone, give_up: float) -> tuple[str, list[Intent]]:
    """The remote's tip and its inbox, oldest first; retried until `give_up`."""
    main = f"refs/heads/{clone.branch}"
    refs = clone.ls_remote(give_up, main, f"{INBOX}/*")
    intents = [Intent.named(ref, sha) for ref, sha in refs.items()
               if ref.startswith(INBOX + "/")]
    return refs.get(main, ""), sorted(intents)


def land(clone: Clone, tip: str, ops: Sequence[Op], message: str,
         intents: Sequence[Intent], mine: str | None = None) -> str | None:
    """Commit every intent, then `ops`, on `tip`; push main and drop the intents' refs.

    One atomic push: main moves and the carried refs go, or nothing happens.  Returns
    the new tip (`tip` itself when nothing changed), None when the remote moved.
    `mine`, the writer's own intent, lands under `message` rather than as carried.
    """
    new_tip = _commit(clone, tip, ops, message, intents, mine)
    refspecs = [f":{i.ref}" for i in intents]
    if new_tip != tip:
        refspecs.insert(0, f"{new_tip}:refs/heads/{clone.branch}")
    if refspecs:
        leases = [f"--force-with-lease={i.ref}:{i.sha}" for i in intents]
        try:
            clone.push(*leases, "--atomic", "origin", *refspecs)
        except RemoteMoved:
            return None
    return new_tip


def _commit(clone: Clone, tip: str, ops: Sequence[Op], message: str,
            intents: Sequence[Intent], mine: str | None) -> str:
    """Commit the intents, then `ops`, on top of `tip`; return the new sha, or `tip`
    itself when nothing changed."""
    files = Files(clone.snapshot(tip).read)
    messages = []
    for intent in intents:
        carried_message, carried_ops = _read(clone, intent)
        if files.apply(carried_ops) and intent.ref != mine:
            messages.append(carried_message)
    files.apply(ops)
    changes = files.changed()
    if not changes:
        return tip
    subject = message or (messages.pop(0) if messages else "carry changes")
    if messages:
        subject += f" (+{len(messages)} carried)"
    return clone.commit(tip, changes, subject + "\n" + "".join(f"\n- {m}" for m in messages))


def _read(clone: Clone, intent: Intent) -> tuple[str, tuple[Op, ...]]:
    """The message and ops an intent carries; a malformed one carries nothing."""
    try:
        data = load_json(clone.message(intent.sha).split("\n\n", 1)[1],
                         max_size=_MAX_INTENT, max_depth=4)
        return str(data["message"]), tuple(decode_ops(data["ops"]))
    except (IndexError, KeyError, TypeError, ValueError) as error:
        # Dropped like any carried intent, with nothing applied: it can never apply.
        log.warning("dropping malformed intent %s: %s", intent.ref, error)
        return f"drop malformed intent {intent.ref}", ()


def submit(clone: Clone, ops: tuple[Op, ...], message: str, give_up: float) -> TransactResult:
    """Land `ops` through the inbox: publish them as an intent, then wait for another
    writer to carry it, or carry it (and whatever else is pending) when it is this
    writer's turn.  The caller holds the clone's lock."""
    tip = clone.fetch_until(give_up)
    changed = affected(clone.snapshot(tip).read, ops)
    if not changed:
        return TransactResult(None)
    body = json.dumps({"message": message, "ops": encode_ops(ops)})
    sha = clone.commit_text(f"intent: {message}\n\n{body}")
    # The name sorts by creation time: the inbox is a FIFO.
    mine = f"{INBOX}/{int(time.time() * 1000):015d}-{clone.writer}-{uuid.uuid4().hex[:8]}"
    clone.push("origin", f"{sha}:{mine}")
    # When main last moved, as far as this writer knows: when its tip was committed (in
    # whole seconds, by another node's clock; never in the future).
    watch = _Watch(tip, time.monotonic() - max(0.0, time.time() - clone.committed(tip)))
    attempts = 1
    while True:
        tip, intents = _wait_for_turn(clone, mine, watch, message, give_up)
        if all(i.ref != mine for i in intents):  # another writer carried it
            clone.fetch_until(give_up)
            return TransactResult(tip, attempts, 0, changed)
        result = _carry(clone, mine, message, tip, intents, changed, attempts, give_up)
        if isinstance(result, TransactResult):
            return result
        # Another carrier pushed main first: it is at work, so wait for it again.
        attempts, watch.moved = result, time.monotonic()


@dataclass
class _Watch:
    """What a waiting writer saw of main: its tip, and when it last moved (monotonic)."""

    tip: str
    moved: float
    since: float = field(default_factory=time.monotonic)  # watching since


def _wait_for_turn(clone: Clone, mine: str, watch: _Watch, message: str,
                   give_up: float) -> tuple[str, list[Intent]]:
    """Wait, cheaply (ls-remote writes nothing), until another writer has carried `mine`
    or it is this writer's turn (`_my_turn`).  The remote's tip and inbox then."""
    # Polls start at once (the carrier may be done already) and slow to one every two
    # seconds, in a storm every five: each is a round trip to the server every waiting
    # writer makes, while a carrier takes everything pending in one push, however many
    # wait.  The next in line polls at least every `_QUIET`: it takes over when the
    # carrier is done.
    delays = itertools.chain([0.0], backoffs(first=0.1, cap=5.0, factor=2.0))
    rank, intents = 1, []
    while True:
        delay = next(delays)
        time.sleep(min(delay, _QUIET) if rank == 0 else
                   delay if len(intents) >= _STORM else min(delay, 2.0))
        tip, intents = pending(clone, give_up)
        if all(i.ref != mine for i in intents):
            return tip, intents
        now = time.monotonic()
        if tip != watch.tip:
            # Someone is pushing main, and every push of main carries the inbox.
            watch.tip, watch.moved = tip, now
            continue
        rank = [i.ref for i in intents].index(mine)
        if _my_turn(rank, len(intents), now - watch.moved, now - max(watch.moved, watch.since)):
            return tip, intents
        _check(give_up, clone, message, 1, mine)


def _my_turn(rank: int, pending: int, still: float, waited: float) -> bool:
    """Whether a writer carries now: `rank` intents ahead of its own, `pending` in the
    inbox, main having stood still for `still` seconds (it did since the last poll),
    `waited` of them while this writer watched.  The first in line carries at once
    while few are waiting, in a storm once main is quiet (a carrier at work would have
    moved it); the one behind it when the carrier seems stalled, and so on, one at a time.
    Age does not count: in a long storm every writer has waited long, and a writer that
    died (an orphan's) is passed over by the patience of the next."""
    if rank == 0 and (pending < _STORM or still >= _QUIET):
        return True
    return waited >= _PATIENCE + rank * _STAGGER


def _carry(clone: Clone, mine: str, message: str, tip: str, intents: list[Intent],
           changed: tuple[str, ...], attempts: int, give_up: float) -> TransactResult | int:
    """This writer's turn: carry everything pending, its own intent included, then keep
    carrying newcomers while they come, for up to `_DRAIN`, so one writer carries a storm.
    Losing the race for main to another carrier before its own intent landed returns
    the pushes made so far: that carrier is at work, and likely carries this one too."""
    carried, landed, drain_until = 0, None, 0.0
    remote_tip = tip
    while True:
        own = any(i.ref == mine for i in intents)
        if not intents or (not own and time.monotonic() > drain_until):
            if remote_tip != clone.remote_tip():
                clone.fetch_until(give_up)
            return TransactResult(landed or remote_tip, attempts, carried, changed)
        try:
            tip = clone.fetch([i.ref for i in intents])
        except RemoteMoved:  # an intent was carried meanwhile: another carrier is at work
            new_tip = None
        else:
            attempts += 1
            new_tip = land(clone, tip, (), message if own else "", intents, mine)
        if new_tip is None:
            if own:
                return attempts
            drain_until = 0.0  # the other carrier drains the rest
        else:
            if own:
                landed, drain_until = new_tip, time.monotonic() + _DRAIN
            carried += len(intents) - own
            if len(intents) - own >= _STORM:  # a storm: let newcomers gather
                time.sleep(_GATHER)
        remote_tip, intents = pending(clone, give_up)


def _check(give_up: float, clone: Clone, message: str, attempts: int, mine: str) -> None:
    if time.monotonic() > give_up:
        raise GitError(
            f"gave up waiting for '{message}' to land in {clone.url} after {attempts} "
            f"pushes; it stays queued as {mine} and the next writer carries it")


def carry_orphans(clone: Clone) -> TransactResult:
    """Carry intents whose writers died before they landed.  The caller holds the
    clone's lock."""
    _, intents = pending(clone, time.monotonic())
    orphans = [i for i in intents if i.age > _ORPHAN_AFTER]
    if not orphans:
        return TransactResult(None)
    try:
        tip = clone.fetch([i.ref for i in orphans])
    except RemoteMoved:
        return TransactResult(None)  # somebody else carried them
    commit = land(clone, tip, (), "", orphans)
    return TransactResult(commit, attempts=1, carried=0 if commit is None else len(orphans))
