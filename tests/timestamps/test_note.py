"""Signed notes and checkpoints: Go's sumdb/note test vectors, round trips and malformed input."""

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from timestamps import note

# From golang.org/x/mod/sumdb/note's tests: a signer key PRIVATE+KEY+<name>+<id>+base64(0x01 || seed).
PETER_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

ORIGIN = "example.test/log"
ROOT = bytes(range(32))


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def vkey(key: Ed25519PrivateKey) -> str:
    return note.verifier_key(ORIGIN, key.public_key())


@pytest.fixture(scope="module")
def signed(key: Ed25519PrivateKey) -> str:
    return note.sign_note(note.checkpoint_text(ORIGIN, 42, ROOT), name=ORIGIN, private_key=key)


# -- Go's vectors


def test_signing_reproduces_go_exactly() -> None:
    peter = Ed25519PrivateKey.from_private_bytes(PETER_SEED)

    assert note.sign_note(GO_TEXT, name="PeterNeumann", private_key=peter) == GO_TEXT + "\n" + PETER_SIG


def test_verifier_key_reproduces_go_exactly() -> None:
    peter = Ed25519PrivateKey.from_private_bytes(PETER_SEED)

    assert note.verifier_key("PeterNeumann", peter.public_key()) == PETER_VKEY
    assert note.key_id("PeterNeumann", peter.public_key()) == bytes.fromhex("c74f20a3")


def test_parse_verifier_key() -> None:
    name, kid, public_key = note.parse_verifier_key(PETER_VKEY)

    assert (name, kid) == ("PeterNeumann", bytes.fromhex("c74f20a3"))
    assert note.verifier_key(name, public_key) == PETER_VKEY


def test_opening_go_notes_ignores_unknown_signers() -> None:
    doubly_signed = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG

    assert note.open_note(doubly_signed, [PETER_VKEY]) == GO_TEXT
    assert note.open_note(doubly_signed, [ENOCH_VKEY]) == GO_TEXT
    assert note.open_note(doubly_signed, [PETER_VKEY, ENOCH_VKEY]) == GO_TEXT


# -- Round trips


def test_sign_open_round_trip(signed: str, vkey: str) -> None:
    text = note.open_note(signed, [vkey])

    assert note.parse_checkpoint(text) == note.Checkpoint(origin=ORIGIN, size=42, root_hash=ROOT)


def test_checkpoint_format(signed: str) -> None:
    text, signature = signed.split("\n\n")

    assert text == f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}"
    assert signature.startswith(f"\u2014 {ORIGIN} ")
    assert len(base64.b64decode(signature.split(" ")[2])) == 4 + 64


def test_verifier_key_format(key: Ed25519PrivateKey, vkey: str) -> None:
    name, id_hex, key_b64 = vkey.split("+", 2)

    assert name == ORIGIN
    assert bytes.fromhex(id_hex) == note.key_id(ORIGIN, key.public_key())
    assert base64.b64decode(key_b64) == b"\x01" + key.public_key().public_bytes_raw()


def test_text_may_hold_blank_lines(key: Ed25519PrivateKey, vkey: str) -> None:
    text = "first\n\nthird\n\n"

    assert note.open_note(note.sign_note(text, name=ORIGIN, private_key=key), [vkey]) == text


def test_cosigned_note_opens_with_either_key(signed: str, vkey: str) -> None:
    witness = Ed25519PrivateKey.generate()
    witness_vkey = note.verifier_key("witness.test", witness.public_key())

    cosigned = note.add_signature(signed, name="witness.test", private_key=witness)

    assert note.open_note(cosigned, [vkey]) == note.open_note(cosigned, [witness_vkey])
    assert cosigned.startswith(signed)


def test_resigning_replaces_the_signature_of_the_same_key(key: Ed25519PrivateKey, signed: str) -> None:
    again = note.add_signature(signed, name=ORIGIN, private_key=key)

    assert again.count("\u2014 ") == 1


# -- Rejections


def test_tampered_text_fails(signed: str, vkey: str) -> None:
    with pytest.raises(note.NoteError, match="invalid signature"):
        note.open_note(signed.replace("\n42\n", "\n43\n"), [vkey])


def test_tampered_signature_fails(signed: str, vkey: str) -> None:
    text, line = signed.split("\n\n")
    prefix, encoded = line.rsplit(" ", 1)
    blob = bytearray(base64.b64decode(encoded))
    blob[10] ^= 1

    with pytest.raises(note.NoteError, match="invalid signature"):
        note.open_note(f"{text}\n\n{prefix} {base64.b64encode(blob).decode()}\n", [vkey])


def test_unknown_key_fails(signed: str) -> None:
    stranger = note.verifier_key(ORIGIN, Ed25519PrivateKey.generate().public_key())

    with pytest.raises(note.NoteError, match="no signature by a known key"):
        note.open_note(signed, [stranger])


def test_no_keys_fails(signed: str) -> None:
    with pytest.raises(note.NoteError, match="no signature by a known key"):
        note.open_note(signed, [])


def test_same_key_under_another_name_fails(key: Ed25519PrivateKey, signed: str) -> None:
    renamed = note.verifier_key("other.test/log", key.public_key())

    with pytest.raises(note.NoteError, match="no signature by a known key"):
        note.open_note(signed, [renamed])


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda n: n.replace("\n\n", "\n"), id="no blank line"),
        pytest.param(lambda n: n[:-1], id="no final newline"),
        pytest.param(lambda n: n.replace("\u2014", "-"), id="hyphen for em dash"),
        pytest.param(lambda n: n.replace("\u2014 ", "\u2014"), id="no space after dash"),
        pytest.param(lambda n: n.replace("\n42\n", "\n4\t2\n"), id="control character"),
        pytest.param(lambda n: n.replace("\n42\n", "\n4\ud8002\n"), id="not UTF-8"),
        pytest.param(lambda n: n.rstrip("\n").rsplit(" ", 1)[0] + " AAAA\n", id="short signature"),
        pytest.param(lambda n: n.rstrip("\n").rsplit(" ", 1)[0] + " not-base64!\n", id="bad base64"),
        pytest.param(lambda n: n.rstrip("\n").rstrip("=") + "\n", id="base64 without padding"),
        pytest.param(lambda n: n.replace(ORIGIN + " ", "bad+name "), id="plus in name"),
        pytest.param(lambda n: n + "\u2014 \n", id="empty signature line"),
        pytest.param(lambda n: n + "trailer\n", id="line that is no signature"),
        pytest.param(lambda n: n + "\n", id="trailing blank line"),
        pytest.param(lambda n: n + n.split("\n\n")[1] * 100, id="too many signatures"),
    ],
)
def test_malformed_notes_are_rejected(mangle: Callable[[str], str], signed: str, vkey: str) -> None:
    with pytest.raises(note.NoteError):
        note.open_note(mangle(signed), [vkey])


@pytest.mark.parametrize(
    "text",
    ["no final newline", "tab\there\n", "", "\ud800\n"],
    ids=["no newline", "control character", "empty", "not UTF-8"],
)
def test_unsignable_text_is_refused(key: Ed25519PrivateKey, text: str) -> None:
    with pytest.raises(note.NoteError):
        note.sign_note(text, name=ORIGIN, private_key=key)


@pytest.mark.parametrize("name", ["", "with space", "with+plus", "nbsp\u00a0name", "tab\tname"])
def test_invalid_key_names_are_refused(key: Ed25519PrivateKey, name: str) -> None:
    with pytest.raises(note.NoteError, match="key name"):
        note.verifier_key(name, key.public_key())
    with pytest.raises(note.NoteError, match="key name"):
        note.sign_note("text\n", name=name, private_key=key)


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",
        # Go's own bad keys: a wrong key length and an unknown algorithm, each with a matching key ID.
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
    ids=["no key", "wrong key ID", "short key ID", "bad base64", "wrong key length", "unknown algorithm"],
)
def test_malformed_verifier_keys_are_rejected(vkey: str) -> None:
    with pytest.raises(note.NoteError):
        note.parse_verifier_key(vkey)


def test_a_malformed_key_among_the_verifier_keys_is_an_error(signed: str, vkey: str) -> None:
    with pytest.raises(note.NoteError, match="verifier key"):
        note.open_note(signed, [vkey, "not a key"])


# -- Checkpoint bodies


def test_checkpoint_extension_lines_are_kept() -> None:
    text = note.checkpoint_text(ORIGIN, 7, ROOT) + "ext one\next two\n"

    assert note.parse_checkpoint(text).extensions == ("ext one", "ext two")


def test_empty_tree_checkpoint() -> None:
    assert note.parse_checkpoint(note.checkpoint_text(ORIGIN, 0, ROOT)).size == 0


@pytest.mark.parametrize(
    "text",
    [
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}",
        f"{ORIGIN}\n42\n",
        f"\n42\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n042\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n-1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n+1\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n\u0664\u0662\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n{2**63}\n{base64.b64encode(ROOT).decode()}\n",
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n",
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode().rstrip('=')}\n",
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT).decode()}\n\n",
    ],
    ids=[
        "no final newline",
        "no root",
        "empty origin",
        "leading zero",
        "negative size",
        "plus sign",
        "non-ASCII digits",
        "size beyond int64",
        "short root",
        "unpadded root",
        "empty extension line",
    ],
)
def test_malformed_checkpoints_are_rejected(text: str) -> None:
    with pytest.raises(note.NoteError):
        note.parse_checkpoint(text)


@pytest.mark.parametrize(
    ("origin", "size", "root"),
    [("", 1, ROOT), ("two\nlines", 1, ROOT), (ORIGIN, -1, ROOT), (ORIGIN, 1, ROOT[:31])],
    ids=["empty origin", "newline in origin", "negative size", "short root"],
)
def test_checkpoint_text_refuses_bad_fields(origin: str, size: int, root: bytes) -> None:
    with pytest.raises(note.NoteError):
        note.checkpoint_text(origin, size, root)
