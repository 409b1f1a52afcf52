"""Writes of the trust layer: log appends, checkpoints, time-stamp tokens."""

import logging
import secrets
from collections.abc import Sequence

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from timestamps import fsck, keys, merkle, note, rfc3161
from timestamps.exceptions import LogHaltedError, LogIntegrityError, LogRangeError
from timestamps.models import Checkpoint, LogAlarm, LogEntry, LogHead, LogNode, SigningKey, TimestampToken
from timestamps.selectors import checkpoint_latest, log_read_nodes, node_key

APPEND_BATCH = 500

logger = logging.getLogger(__name__)


def _lock_head() -> LogHead:
    """Lock the head row; every appender queues here, which keeps indices gap-free."""
    head, _ = LogHead.objects.select_for_update().get_or_create(
        id=1, defaults={"size": 0, "root_hash": merkle.EMPTY_ROOT, "frontier": b"", "updated_at": timezone.now()}
    )
    return head


def _append_locked(head: LogHead, entries: Sequence[bytes]) -> list[LogEntry]:
    start = head.size
    leaves = [merkle.leaf_hash(entry) for entry in entries]
    stored = bytes(head.frontier)
    peaks = [stored[i : i + merkle.HASH_SIZE] for i in range(0, len(stored), merkle.HASH_SIZE)]
    peaks, nodes = merkle.frontier_append(start, peaks, leaves)
    now = timezone.now()
    rows = [
        LogEntry(index=start + offset, data=entry, leaf_hash=leaf, created_at=now)
        for offset, (entry, leaf) in enumerate(zip(entries, leaves, strict=True))
    ]
    LogEntry.objects.bulk_create(rows, batch_size=APPEND_BATCH)
    LogNode.objects.bulk_create(
        [LogNode(key=node_key(node), hash=digest) for node, digest in nodes], batch_size=APPEND_BATCH
    )
    head.size = start + len(entries)
    head.frontier = b"".join(peaks)
    head.root_hash = merkle.frontier_root(peaks)
    head.updated_at = now
    head.save(update_fields=["size", "root_hash", "frontier", "updated_at"])
    return rows


@transaction.atomic
def log_append(*, data: bytes) -> LogEntry:
    """Append one entry; its index is the log size before the call."""
    return _append_locked(_lock_head(), [data])[0]


@transaction.atomic
def log_append_many(*, entries: Sequence[bytes]) -> list[LogEntry]:
    """Append entries as one contiguous run under a single lock."""
    if not entries:
        return []
    return _append_locked(_lock_head(), entries)


@transaction.atomic
def checkpoint_publish() -> Checkpoint:
    """Sign a checkpoint of the current log with the current log key, after proving it consistent.

    Reuses the latest checkpoint while the log has not grown and its key is still current. Runs
    under the head lock, so checkpoints are made in log order and never race each other.
    """
    head = _lock_head()
    alarm = LogAlarm.objects.filter(id=1).first()
    if alarm is not None:
        logger.error(
            "checkpoint signing refused: log_fsck raised an alarm at %s that no operator cleared", alarm.raised_at
        )
        raise LogHaltedError("checkpoint signing is halted: the log failed an integrity check and awaits an operator")
    log_key = keys.key_current(SigningKey.Purpose.LOG)
    latest = Checkpoint.objects.order_by("-size", "-created_at").first()
    if latest is not None and latest.size == head.size and latest.key_id == log_key.record.pk:
        return latest
    root = merkle.tree_hash(head.size, log_read_nodes)
    if root != bytes(head.root_hash):
        raise LogIntegrityError(f"stored tree nodes and the head disagree on the root at size {head.size}")
    if latest is not None and latest.size > 0:
        proof = merkle.consistency_proof(latest.size, head.size, log_read_nodes)
        if not merkle.verify_consistency(latest.size, head.size, bytes(latest.root_hash), root, proof):
            raise LogIntegrityError(f"the log at {head.size} is not consistent with the checkpoint at {latest.size}")
    origin = settings.MODELCOURT_LOG_ORIGIN
    signed = note.sign_note(note.checkpoint_text(origin, head.size, root), name=origin, private_key=log_key.private_key)
    return Checkpoint.objects.create(
        size=head.size, root_hash=root, note=signed, key=log_key.record, created_at=timezone.now()
    )


def log_fsck(*, clear: bool = False) -> fsck.FsckReport:
    """Check the whole stored log (fsck.log_check); problems raise the alarm that halts checkpoint signing.

    With `clear`, a clean check also lowers a raised alarm; a check with problems never does.
    """
    report = fsck.log_check()
    if not report.clean:
        LogAlarm.objects.update_or_create(id=1, defaults={"problems": report.summary(), "raised_at": timezone.now()})
        logger.error(
            "log_fsck found %d problem(s) in the log of %d entries; checkpoint signing is halted until an "
            "operator runs `manage.py log_fsck --clear` after a clean check. First: %s",
            len(report.problems) + report.omitted,
            report.size,
            report.problems[0],
        )
    elif clear:
        LogAlarm.objects.filter(id=1).delete()
    return report


def checkpoint_covering(*, size: int, key: SigningKey | None = None) -> Checkpoint:
    """The latest checkpoint of at least `size` entries; one is signed only when none covers them yet.

    Readers (receipts, verdict bundles) take this rather than `checkpoint_publish`: the beat schedule
    signs checkpoints as the log grows, so a download costs no signature and no head lock. With `key`
    (a log key, current or retired) only that key's checkpoints count: a retired key signs nothing more,
    so when none of its checkpoints covers `size` entries, LogIntegrityError says so.
    """
    checkpoint = checkpoint_latest(size=size, key=key)
    if checkpoint is None:
        if key is not None and key.status != SigningKey.Status.CURRENT:
            raise LogIntegrityError(
                f"no checkpoint signed by the retired log key {key.kid[:16]} covers the first {size} entries, "
                "and a retired key signs no more checkpoints"
            )
        checkpoint = checkpoint_publish()
        if key is not None and checkpoint.key_id != key.pk:
            raise LogIntegrityError(
                f"the log key {key.kid[:16]} was retired meanwhile: no checkpoint it signed covers the first "
                f"{size} entries"
            )
    if checkpoint.size < size:
        raise LogRangeError(f"size {size} exceeds the log size {checkpoint.size}")
    return checkpoint


def _issue(query_der: bytes) -> tuple[rfc3161.IssueResult, TimestampToken | None]:
    tsa_key, signer = keys.tsa_signer()
    with transaction.atomic():
        head = _lock_head()
        result = rfc3161.issue_reply(query_der, signer=signer, serial=head.size, gen_time=timezone.now())
        if result.token_der is None:
            return result, None
        entry = _append_locked(head, [result.token_der])[0]
        info = rfc3161.parse_token(result.token_der)
        token = TimestampToken.objects.create(
            serial=entry.index,
            log_entry=entry,
            token=result.token_der,
            hash_algorithm=info.hash_algorithm,
            message_imprint=info.message_imprint,
            gen_time=info.gen_time,
            key=tsa_key,
        )
    return result, token


def timestamp_issue(*, query_der: bytes) -> rfc3161.IssueResult:
    """Answer an RFC 3161 query; a granted token is appended to the log, its serial being its index."""
    return _issue(query_der)[0]


def timestamp_digest(*, digest: bytes, hash_name: str = "sha256") -> TimestampToken:
    """Time-stamp a digest with our own TSA (what commitments and verdicts use)."""
    query = rfc3161.build_query(digest, hash_name=hash_name, nonce=secrets.randbits(63), cert_req=True)
    result, token = _issue(query)
    if token is None:
        raise LogIntegrityError(f"the TSA refused our own query: {result.fail_info}")
    return token
