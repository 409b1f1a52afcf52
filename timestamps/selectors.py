"""Reads of the trust layer: log entries, proofs, checkpoints, public keys."""

import base64
from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from timestamps import keys, merkle, note
from timestamps.exceptions import LogIntegrityError, LogNotFoundError, LogRangeError
from timestamps.models import Checkpoint, LogEntry, LogHead, LogNode, SigningKey

LEVEL_SHIFT = 56
MAX_INDEX = 1 << 62


def node_key(node: merkle.NodeId) -> int:
    """Pack (level, position) into one integer primary key."""
    level, position = node
    return (level << LEVEL_SHIFT) | position


def log_read_nodes(ids: Sequence[merkle.NodeId]) -> list[bytes]:
    """Fetch stored subtree hashes in one query (the merkle module's HashReader)."""
    wanted = [node_key(node) for node in ids]
    found = dict(LogNode.objects.filter(key__in=set(wanted)).values_list("key", "hash"))
    missing = [node for node, key in zip(ids, wanted, strict=True) if key not in found]
    if missing:
        raise LogIntegrityError(f"stored tree nodes missing: {missing[:4]}")
    return [bytes(found[key]) for key in wanted]


def log_size() -> int:
    """Number of entries in the log."""
    head = LogHead.objects.filter(id=1).only("size").first()
    return head.size if head else 0


def log_entry_get(*, index: int) -> LogEntry:
    """One entry by index."""
    if index >= MAX_INDEX:
        raise LogNotFoundError(f"no entry {index}: indices are below 2**62")
    entry = LogEntry.objects.filter(index=index).first()
    if entry is None:
        raise LogNotFoundError(f"no entry {index}: the log has {log_size()} entries")
    return entry


def _check_size(size: int) -> None:
    current = log_size()
    if size > current:
        raise LogRangeError(f"size {size} exceeds the log size {current}")


def log_inclusion_proof(*, index: int, size: int) -> list[bytes]:
    """RFC 9162 inclusion proof of entry `index` in the tree of the first `size` entries."""
    if not 0 <= index < size:
        raise LogRangeError(f"index must satisfy 0 <= index < size (index={index}, size={size})")
    _check_size(size)
    return merkle.inclusion_proof(index, size, log_read_nodes)


def log_consistency_proof(*, first: int, second: int) -> list[bytes]:
    """RFC 9162 consistency proof between the trees of sizes `first` and `second`."""
    if not 0 < first <= second:
        raise LogRangeError(f"sizes must satisfy 0 < first <= second (first={first}, second={second})")
    _check_size(second)
    return merkle.consistency_proof(first, second, log_read_nodes)


def checkpoint_get(*, size: int) -> Checkpoint:
    """The signed checkpoint at exactly `size`."""
    checkpoint = Checkpoint.objects.filter(size=size).order_by("-created_at").first()
    if checkpoint is None:
        raise LogNotFoundError(f"no checkpoint was signed at size {size}")
    return checkpoint


def checkpoint_latest(*, size: int = 0, key: SigningKey | None = None) -> Checkpoint | None:
    """The largest checkpoint of at least `size` entries signed by `key`, if there is one.

    Without `key`, by the current log key. With it, by that log key whether current or retired: a verdict's
    bundle carries the log key of its signing time, so only that key's checkpoints open with it.
    """
    checkpoints = Checkpoint.objects.select_related("key").filter(size__gte=size, key__purpose=SigningKey.Purpose.LOG)
    if key is None:
        checkpoints = checkpoints.filter(key__status=SigningKey.Status.CURRENT)
    else:
        checkpoints = checkpoints.filter(key=key)
    return checkpoints.order_by("-size", "-created_at").first()


def log_key_of(*, verifier_key: str) -> SigningKey | None:
    """The log key, current or retired, whose note verifier key (`name+hash+base64`) this is, if it is one."""
    try:
        _, _, public = note.parse_verifier_key(verifier_key)
    except note.NoteError:
        return None
    kid = keys.key_id(public)
    return SigningKey.objects.filter(kid=kid, purpose=SigningKey.Purpose.LOG).first()


def log_proof_get(*, index: int, checkpoint: Checkpoint) -> dict[str, Any]:
    """Where entry `index` sits under `checkpoint`: the `log` object of receipts and verdict bundles."""
    proof = log_inclusion_proof(index=index, size=checkpoint.size)
    return {
        "origin": settings.MODELCOURT_LOG_ORIGIN,
        "index": index,
        "tree_size": checkpoint.size,
        "inclusion_proof": [base64.b64encode(h).decode() for h in proof],
        "checkpoint": checkpoint.note,
    }


def signing_key_list() -> QuerySet[SigningKey]:
    """Every public key, current and retired."""
    return SigningKey.objects.all()
