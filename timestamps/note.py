"""C2SP signed notes (c2sp.org/signed-note) and checkpoints (c2sp.org/tlog-checkpoint) with Ed25519 keys.

The wire format is that of Go's golang.org/x/mod/sumdb/note, which verifies what this module signs.
"""

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ALG_ED25519 = b"\x01"
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
# c2sp asks verifiers to accept at least 16; Go's note package stops at 100.
MAX_SIGNATURES = 100
MAX_TREE_SIZE = 2**63 - 1  # Go's tlog sizes are int64

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_KEY_ID_HEX = re.compile(r"[0-9a-fA-F]{8}")


class NoteError(ValueError):
    """A note, key or checkpoint that is malformed or not signed by a known key."""


@dataclass(frozen=True)
class Checkpoint:
    """The body of a tlog checkpoint."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()


class _Signature(NamedTuple):
    name: str
    key_id: bytes
    signature: bytes
    line: str


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """The 4-byte key ID: SHA-256(name || "\\n" || 0x01 || public key)[:4]."""
    return _key_id(name, _raw(public_key))


def verifier_key(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string `name+<hex key ID>+<base64(0x01 || public key)>`."""
    _check_name(name)
    return f"{name}+{key_id(name, public_key).hex()}+{base64.b64encode(ALG_ED25519 + _raw(public_key)).decode()}"


def parse_verifier_key(vkey: str) -> tuple[str, bytes, Ed25519PublicKey]:
    """Split a verifier key into name, key ID and public key, checking the ID."""
    # Only the first two pluses separate: base64 has pluses of its own.
    parts = vkey.split("+", 2)
    if len(parts) != 3 or not _KEY_ID_HEX.fullmatch(parts[1]):
        raise NoteError("a verifier key is name+<8 hex digits>+<base64 key>")
    name, id_hex, key_b64 = parts
    _check_name(name)
    key = _b64decode(key_b64)
    if len(key) != 1 + 32 or key[:1] != ALG_ED25519:
        raise NoteError(f"verifier key of {name!r} is not an Ed25519 key")
    if bytes.fromhex(id_hex) != _key_id(name, key[1:]):
        raise NoteError(f"verifier key of {name!r} has a key ID that does not match its key")
    return name, bytes.fromhex(id_hex), Ed25519PublicKey.from_public_bytes(key[1:])


def sign_note(text: str, *, name: str, private_key: Ed25519PrivateKey) -> str:
    """Sign `text` (ending in a newline) as a note with one signature."""
    _check_text(text)
    return f"{text}\n{_signature_line(text, name, private_key)}"


def add_signature(note: str, *, name: str, private_key: Ed25519PrivateKey) -> str:
    """Cosign a note, replacing an earlier signature by the same key; the existing ones are not verified."""
    text, signatures = _split(note)
    new = _signature_line(text, name, private_key)
    kid = key_id(name, private_key.public_key())
    kept = [s.line for s in signatures if (s.name, s.key_id) != (name, kid)]
    return text + "\n" + "".join(kept) + new


def open_note(note: str, verifier_keys: Sequence[str]) -> str:
    """The text of `note`, once a signature by one of `verifier_keys` verifies.

    Signatures by unknown keys are ignored; a failing signature by a known key rejects the note.
    """
    known = {(name, kid): key for name, kid, key in map(parse_verifier_key, verifier_keys)}
    text, signatures = _split(note)
    message = text.encode()
    verified = False
    for signature in signatures:
        key = known.get((signature.name, signature.key_id))
        if key is None:
            continue
        try:
            key.verify(signature.signature, message)
        except InvalidSignature:
            raise NoteError(f"invalid signature by {signature.name!r}") from None
        verified = True
    if not verified:
        raise NoteError("the note has no signature by a known key")
    return text


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    """The note text of a checkpoint: origin, size and base64 root hash, one per line."""
    if not origin or "\n" in origin or _CONTROL.search(origin):
        raise NoteError(f"a checkpoint origin is one non-empty line without control characters: {origin!r}")
    if not 0 <= size <= MAX_TREE_SIZE:
        raise NoteError(f"a checkpoint size is between 0 and 2**63 - 1 (size={size})")
    if len(root) != 32:
        raise NoteError(f"a checkpoint root hash has 32 bytes, not {len(root)}")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse the text of a checkpoint (as `open_note` returns it)."""
    if not text.endswith("\n") or _CONTROL.search(text):
        raise NoteError("a checkpoint ends with a newline and has no other control characters")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise NoteError("a checkpoint has at least three lines, none of them empty")
    origin, size, root_b64, *extensions = lines
    if not _DECIMAL.fullmatch(size) or int(size) > MAX_TREE_SIZE:
        raise NoteError(f"a checkpoint size is a decimal number without leading zeros: {size!r}")
    root = _b64decode(root_b64)
    if len(root) != 32:
        raise NoteError(f"a checkpoint root hash has 32 bytes, not {len(root)}")
    return Checkpoint(origin=origin, size=int(size), root_hash=root, extensions=tuple(extensions))


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key_id(name: str, raw_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + ALG_ED25519 + raw_key).digest()[:4]


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise NoteError(f"a key name is non-empty, without spaces, pluses or control characters: {name!r}")
    _check_utf8(name)


def _check_utf8(value: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise NoteError("notes are valid UTF-8") from None


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text ends with a newline")
    if _CONTROL.search(text):
        raise NoteError("note text has no control characters but newlines")
    _check_utf8(text)


def _b64decode(value: str) -> bytes:
    """Strict standard base64: the one canonical encoding only."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError(f"invalid base64: {value[:40]!r}") from None
    if base64.b64encode(raw).decode() != value:
        raise NoteError(f"non-canonical base64: {value[:40]!r}")
    return raw


def _signature_line(text: str, name: str, private_key: Ed25519PrivateKey) -> str:
    _check_name(name)
    signature = private_key.sign(text.encode())
    blob = key_id(name, private_key.public_key()) + signature
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode()}\n"


def _split(note: str) -> tuple[str, list[_Signature]]:
    """Split a note into its text and signatures, checking their form."""
    _check_utf8(note)
    if _CONTROL.search(note):
        raise NoteError("a note has no control characters but newlines")
    # The text ends at the last blank line; the text itself may hold blank lines.
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a note is text, a blank line and signature lines")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("a note ends with a signature line and a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note has at most {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("a signature line starts with an em dash and a space")
        name, _, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
        _check_name(name)
        blob = _b64decode(encoded)
        if len(blob) < 5:
            raise NoteError(f"the signature by {name!r} is too short")
        signatures.append(_Signature(name, blob[:4], blob[4:], line + "\n"))
    return text, signatures
