"""Log appends, checkpoints and append-only storage."""

import base64

import pytest
from django.db import DatabaseError, connection, transaction

from timestamps import dbtriggers, keys, merkle, note, selectors, services
from timestamps.exceptions import LogIntegrityError, LogNotFoundError, LogRangeError
from timestamps.models import Checkpoint, LogEntry, LogHead, LogNode, SigningKey, TimestampToken

pytestmark = pytest.mark.django_db


def _reference_root(entries: list[bytes]) -> bytes:
    store = merkle.MemoryHashStore()
    for entry in entries:
        store.append(entry)
    return merkle.tree_hash(store.size, store.read)


def test_appends_get_consecutive_indices_and_the_rfc9162_root() -> None:
    # given / when
    entries = [f"entry {i}".encode() for i in range(37)]
    rows = [services.log_append(data=entry) for entry in entries]

    # then
    assert [row.index for row in rows] == list(range(37))
    assert selectors.log_size() == 37
    assert merkle.tree_hash(37, selectors.log_read_nodes) == _reference_root(entries)


def test_batch_append_equals_single_appends() -> None:
    services.log_append(data=b"first")
    services.log_append_many(entries=[f"b{i}".encode() for i in range(100)])

    expected = _reference_root([b"first"] + [f"b{i}".encode() for i in range(100)])
    assert merkle.tree_hash(101, selectors.log_read_nodes) == expected


def test_inclusion_and_consistency_proofs_verify() -> None:
    entries = [f"e{i}".encode() for i in range(21)]
    services.log_append_many(entries=entries)
    root = merkle.tree_hash(21, selectors.log_read_nodes)

    proof = selectors.log_inclusion_proof(index=13, size=21)
    assert merkle.verify_inclusion(13, 21, merkle.leaf_hash(b"e13"), proof, root)
    assert not merkle.verify_inclusion(13, 21, merkle.leaf_hash(b"e14"), proof, root)

    old_root = merkle.tree_hash(8, selectors.log_read_nodes)
    consistency = selectors.log_consistency_proof(first=8, second=21)
    assert merkle.verify_consistency(8, 21, old_root, root, consistency)


def test_checkpoint_is_a_signed_note_over_the_current_root() -> None:
    services.log_append_many(entries=[b"a", b"b", b"c"])

    checkpoint = services.checkpoint_publish()

    vkey = keys.log_verifier_key(keys.key_current(SigningKey.Purpose.LOG).record)
    body = note.parse_checkpoint(note.open_note(checkpoint.note, [vkey]))
    assert body.size == 3
    assert body.root_hash == _reference_root([b"a", b"b", b"c"])


def test_checkpoint_is_reused_until_the_log_grows() -> None:
    services.log_append(data=b"a")
    first = services.checkpoint_publish()
    assert services.checkpoint_publish().pk == first.pk

    services.log_append(data=b"b")
    second = services.checkpoint_publish()
    assert second.size == 2
    assert Checkpoint.objects.count() == 2


def test_a_covering_checkpoint_is_reused_and_one_is_signed_only_when_none_covers() -> None:
    services.log_append_many(entries=[b"a", b"b"])
    signed = services.checkpoint_publish()
    services.log_append(data=b"c")

    # entries 0 and 1 are under the checkpoint at 2, though the log has grown since
    assert services.checkpoint_covering(size=2).pk == signed.pk
    assert Checkpoint.objects.count() == 1
    # entry 2 is under none yet
    covering = services.checkpoint_covering(size=3)
    assert covering.size == 3
    assert Checkpoint.objects.count() == 2
    with pytest.raises(LogRangeError):
        services.checkpoint_covering(size=4)


def test_a_checkpoint_by_a_retired_log_key_covers_nothing() -> None:
    services.log_append(data=b"a")
    old = services.checkpoint_publish()

    keys.key_rotate(purpose=SigningKey.Purpose.LOG)

    assert selectors.checkpoint_latest(size=1) is None
    assert services.checkpoint_covering(size=1).key_id != old.key_id


def test_the_log_proof_of_an_entry_under_a_checkpoint() -> None:
    services.log_append_many(entries=[f"e{i}".encode() for i in range(5)])
    checkpoint = services.checkpoint_publish()

    log = selectors.log_proof_get(index=3, checkpoint=checkpoint)

    assert set(log) == {"origin", "index", "tree_size", "inclusion_proof", "checkpoint"}
    assert (log["index"], log["tree_size"], log["checkpoint"]) == (3, 5, checkpoint.note)
    proof = [base64.b64decode(h) for h in log["inclusion_proof"]]
    assert merkle.verify_inclusion(3, 5, merkle.leaf_hash(b"e3"), proof, bytes(checkpoint.root_hash))


def test_checkpoint_refuses_a_log_inconsistent_with_the_previous_checkpoint() -> None:
    # given a checkpoint whose root the stored tree cannot extend
    services.log_append_many(entries=[b"a", b"b"])
    real = services.checkpoint_publish()
    forged = note.checkpoint_text("x", 2, b"\x00" * 32)
    dbtriggers.uninstall(connection)  # as an attacker with database access would
    Checkpoint.objects.filter(pk=real.pk).update(root_hash=b"\x00" * 32, note=forged)
    services.log_append(data=b"c")

    # when / then
    with pytest.raises(LogIntegrityError):
        services.checkpoint_publish()


@pytest.mark.parametrize(
    ("model", "change"),
    [
        (LogEntry, {"data": b"rewritten"}),
        (LogNode, {"hash": b"\x00" * 32}),
        (Checkpoint, {"note": "forged"}),
        (TimestampToken, {"token": b"forged"}),
    ],
)
def test_append_only_tables_refuse_update_and_delete(model: type, change: dict[str, object]) -> None:
    services.log_append_many(entries=[b"a", b"b"])
    services.timestamp_digest(digest=b"\x01" * 32)
    services.checkpoint_publish()

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        model.objects.all().update(**change)  # type: ignore[attr-defined]
    # raw SQL: the ORM's own PROTECT would refuse some of these before the database is asked
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {model._meta.db_table}")  # type: ignore[attr-defined]  # noqa: S608
    assert model.objects.exists()  # type: ignore[attr-defined]


def test_the_head_only_grows() -> None:
    services.log_append_many(entries=[b"a", b"b"])

    with pytest.raises(DatabaseError, match="only grows"), transaction.atomic():
        LogHead.objects.update(size=1)
    with pytest.raises(DatabaseError, match="only grows"), transaction.atomic():
        LogHead.objects.all().delete()
    assert selectors.log_size() == 2


@pytest.mark.postgres
def test_truncate_is_refused() -> None:
    services.log_append(data=b"a")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("TRUNCATE timestamps_logentry CASCADE")
    assert LogEntry.objects.count() == 1


def test_proof_ranges_are_checked() -> None:
    services.log_append_many(entries=[b"a", b"b"])
    with pytest.raises(LogRangeError):
        selectors.log_inclusion_proof(index=2, size=2)
    with pytest.raises(LogRangeError):
        selectors.log_inclusion_proof(index=0, size=3)
    with pytest.raises(LogRangeError):
        selectors.log_consistency_proof(first=0, second=2)
    with pytest.raises(LogNotFoundError):
        selectors.log_entry_get(index=5)
