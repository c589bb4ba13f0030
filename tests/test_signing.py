import subprocess
from pathlib import Path

import pytest
from helpers import keypair

from picluster.signing import (
    NAMESPACE,
    TRUST_NAMESPACE,
    AllowedSigners,
    SignatureError,
    sign,
    signed_by,
    signer_line,
)


@pytest.fixture
def alice(tmp_path: Path) -> Path:
    return keypair(tmp_path / "alice", "alice@laptop")


def signers(*lines: str) -> AllowedSigners:
    return AllowedSigners.parse("# comment\n" + "".join(f"{line}\n" for line in lines),
                                "local-vars/allowed_signers")


def test_a_signed_message_verifies_for_its_signer(alice: Path) -> None:
    (signature,) = sign([b"hello"], alice)
    allowed = signers(signer_line(alice.with_suffix(".pub").read_text(), "alice"))
    allowed.verify(b"hello", signature, "alice")
    with pytest.raises(SignatureError, match="does not verify"):
        allowed.verify(b"hello!", signature, "alice")
    with pytest.raises(SignatureError, match="not a trusted signer for 'mallory'"):
        allowed.verify(b"hello", signature, "mallory")


def test_one_ssh_keygen_signs_a_batch(alice: Path) -> None:
    messages = [f"m{i}".encode() for i in range(20)]
    signatures = sign(messages, alice)
    allowed = signers(signer_line(alice.with_suffix(".pub").read_text(), "alice"))
    for message, signature in zip(messages, signatures, strict=True):
        allowed.verify(message, signature, "alice")


def test_an_untrusted_key_does_not_verify(alice: Path, tmp_path: Path) -> None:
    bob = keypair(tmp_path / "bob")
    (signature,) = sign([b"x"], bob)
    allowed = signers(signer_line(alice.with_suffix(".pub").read_text(), "alice"))
    with pytest.raises(SignatureError, match="not a trusted signer"):
        allowed.verify(b"x", signature, "alice")


def test_no_signers_says_how_to_add_one(alice: Path) -> None:
    (signature,) = sign([b"x"], alice)
    with pytest.raises(SignatureError, match="picluster trust"):
        signers().verify(b"x", signature, "alice")


def test_keys_for_other_namespaces_are_ignored_and_bad_lines_reported(alice: Path) -> None:
    key = " ".join(alice.with_suffix(".pub").read_text().split()[:2])
    allowed = signers(f'alice namespaces="git" {key}', "broken line")
    assert allowed.entries == ()
    assert allowed.problems and "line 3" in allowed.problems[0]


def test_signer_line_checks_its_input(alice: Path) -> None:
    with pytest.raises(SignatureError, match="not an OpenSSH public key"):
        signer_line("hello", "alice")
    with pytest.raises(SignatureError, match="not a usable signer name"):
        signer_line(alice.with_suffix(".pub").read_text(), "two words")
    with pytest.raises(SignatureError, match="does not exist"):
        sign([b"x"], alice.with_name("missing"))


def test_a_key_outside_its_validity_window_signs_nothing(alice: Path) -> None:
    (signature,) = sign([b"x"], alice)
    key = " ".join(alice.with_suffix(".pub").read_text().split()[:2])
    expired = signers(f'alice namespaces="picluster-task",valid-before="20000101" {key}')
    with pytest.raises(SignatureError, match="no trusted task signers"):
        expired.verify(b"x", signature, "alice")
    current = signers(f'alice namespaces="picluster-task",valid-after="20000101Z" {key}')
    current.verify(b"x", signature, "alice")
    authority = signers(f'alice cert-authority,namespaces="picluster-task" {key}')
    assert authority.entries == () and "not supported" in authority.problems[0]


def test_each_purpose_signs_in_its_own_namespace(alice: Path, tmp_path: Path) -> None:
    text = alice.with_suffix(".pub").read_text()
    admin, tasks_only = signer_line(text, "alice", admin=True), signer_line(text, "alice")
    assert 'namespaces="picluster-task,picluster-trust"' in admin
    (for_trust,) = sign([b"file"], alice, TRUST_NAMESPACE)
    (for_task,) = sign([b"file"], alice, NAMESPACE)
    assert AllowedSigners.parse(admin, "x", TRUST_NAMESPACE).verify(b"file", for_trust) == "alice"
    with pytest.raises(SignatureError, match="no trusted signers allowed to change"):
        AllowedSigners.parse(tasks_only, "x", TRUST_NAMESPACE).verify(b"file", for_trust)
    with pytest.raises(SignatureError, match="does not verify"):  # a task's is no trust's
        AllowedSigners.parse(admin, "x", TRUST_NAMESPACE).verify(b"file", for_task)
    assert signed_by(b"file", for_trust, TRUST_NAMESPACE).startswith("SHA256:")


def test_a_key_others_can_read_signs_from_a_private_copy(alice: Path) -> None:
    alice.chmod(0o644)  # as a boot partition (FAT) shows it
    (signature,) = sign([b"x"], alice)
    signers(signer_line(alice.with_suffix(".pub").read_text(), "alice")).verify(
        b"x", signature, "alice")


def test_a_verdict_is_kept_so_a_signature_is_checked_once(
        alice: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (signature,) = sign([b"kept"], alice)
    allowed = signers(signer_line(alice.with_suffix(".pub").read_text(), "alice"))
    assert allowed.verify(b"kept", signature) == "alice"
    monkeypatch.setattr(subprocess, "run", None)  # a second check must not run ssh-keygen
    assert allowed.verify(b"kept", signature) == "alice"
    with pytest.raises(SignatureError, match="not a trusted signer for 'mallory'"):
        allowed.verify(b"kept", signature, "mallory")


def test_allowed_signers_lines_as_ssh_keygen_reads_them(alice: Path) -> None:
    kind, key = alice.with_suffix(".pub").read_text().split()[:2]
    (signature,) = sign([b"x"], alice)
    quoted = signers(f'"alice,a*"\tnamespaces="git,picluster-task" {kind} {key} laptop')
    assert quoted.verify(b"x", signature, "alfred") == "alfred"
    wrong_type = signers(f"alice ssh-rsa {key}")
    assert wrong_type.entries == () and "not a ssh-rsa key" in wrong_type.problems[0]
    unknown = signers(f'alice principal="x" {kind} {key}')
    assert unknown.entries == () and "options" in unknown.problems[0]
    twice = signers(f'alice namespaces="a",namespaces="b" {kind} {key}')
    assert "given twice" in twice.problems[0]
