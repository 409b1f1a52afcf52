"""Hostile writes to the append-only log tables, in raw SQL as a compromised account would send them."""

import pytest
from django.db import DatabaseError, connection, transaction

from timestamps import dbtriggers, merkle, services
from timestamps.models import Checkpoint, LogEntry, LogHead, LogNode, TimestampToken

pytestmark = pytest.mark.django_db

sqlite_only = pytest.mark.skipif(connection.vendor != "sqlite", reason="REPLACE is SQLite's")


def _fill() -> None:
    services.log_append_many(entries=[b"a", b"b", b"c"])
    services.timestamp_digest(digest=b"\x01" * 32)
    services.checkpoint_publish()


def _refused(sql: str, params: list[object]) -> None:
    with (
        pytest.raises(DatabaseError, match=r"append-only|only grows"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(sql, params)


@sqlite_only
@pytest.mark.parametrize("verb", ["INSERT OR REPLACE", "REPLACE"])
def test_replace_cannot_rewrite_a_log_entry(verb: str) -> None:
    _fill()
    forged = b"forged"

    _refused(
        f'{verb} INTO timestamps_logentry ("index", data, leaf_hash, created_at) VALUES (%s, %s, %s, %s)',
        [0, forged, merkle.leaf_hash(forged), "2026-01-01 00:00:00"],
    )

    assert bytes(LogEntry.objects.get(index=0).data) == b"a"


@sqlite_only
def test_replace_cannot_rewrite_a_node() -> None:
    _fill()
    before = bytes(LogNode.objects.get(key=0).hash)

    _refused('INSERT OR REPLACE INTO timestamps_lognode ("key", hash) VALUES (%s, %s)', [0, b"\x00" * 32])

    assert bytes(LogNode.objects.get(key=0).hash) == before


@sqlite_only
def test_replace_cannot_rewrite_a_checkpoint_through_its_size_and_key() -> None:
    _fill()
    real = Checkpoint.objects.get()

    # a fresh id, but the (size, key) of the real checkpoint: REPLACE would delete the real one
    _refused(
        "INSERT OR REPLACE INTO timestamps_checkpoint (size, root_hash, note, key_id, created_at) "
        "VALUES (%s, %s, %s, %s, %s)",
        [real.size, b"\x00" * 32, "forged", real.key_id, "2026-01-01 00:00:00"],
    )

    assert Checkpoint.objects.get().note == real.note


@sqlite_only
def test_replace_cannot_rewrite_a_timestamp_token_through_its_serial() -> None:
    _fill()
    real = TimestampToken.objects.get()

    _refused(
        "INSERT OR REPLACE INTO timestamps_timestamptoken "
        "(serial, log_entry_id, token, hash_algorithm, message_imprint, gen_time, key_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [real.serial, 0, b"forged", "sha256", b"\x02" * 32, "2026-01-01 00:00:00", real.key_id],
    )

    assert bytes(TimestampToken.objects.get().token) == bytes(real.token)


def test_plain_appends_still_work_with_the_insert_triggers() -> None:
    _fill()
    services.log_append_many(entries=[b"d", b"e"])
    services.checkpoint_publish()

    assert LogEntry.objects.count() == 6
    assert Checkpoint.objects.count() == 2


@sqlite_only
def test_replace_cannot_swap_the_head() -> None:
    _fill()
    head = LogHead.objects.get()

    _refused(
        "INSERT OR REPLACE INTO timestamps_loghead (id, size, root_hash, frontier, updated_at) "
        "VALUES (1, %s, %s, %s, %s)",
        [head.size, b"\x00" * 32, bytes(head.frontier), "2026-01-01 00:00:00"],
    )

    assert bytes(LogHead.objects.get().root_hash) == bytes(head.root_hash)


@pytest.mark.parametrize("column", ["root_hash", "frontier"])
def test_the_head_refuses_a_new_tree_at_the_same_size(column: str) -> None:
    _fill()
    head = LogHead.objects.get()

    with pytest.raises(DatabaseError, match="only grows"), transaction.atomic():
        LogHead.objects.update(**{column: b"\x00" * 32})

    assert bytes(LogHead.objects.get().root_hash) == bytes(head.root_hash)


def test_the_head_accepts_a_same_size_write_of_the_same_tree() -> None:
    _fill()
    head = LogHead.objects.get()

    LogHead.objects.update(root_hash=bytes(head.root_hash), frontier=bytes(head.frontier))

    assert LogHead.objects.get().size == head.size


@pytest.mark.postgres
def test_on_conflict_do_update_is_refused_on_postgres() -> None:
    _fill()

    _refused(
        'INSERT INTO timestamps_logentry ("index", data, leaf_hash, created_at) VALUES (%s, %s, %s, now()) '
        'ON CONFLICT ("index") DO UPDATE SET data = EXCLUDED.data',
        [0, b"forged", merkle.leaf_hash(b"forged")],
    )
    _refused(
        "INSERT INTO timestamps_loghead (id, size, root_hash, frontier, updated_at) VALUES (1, 4, %s, '', now()) "
        "ON CONFLICT (id) DO UPDATE SET root_hash = EXCLUDED.root_hash",
        [b"\x00" * 32],
    )

    assert bytes(LogEntry.objects.get(index=0).data) == b"a"


def test_install_is_idempotent_and_uninstall_removes_everything() -> None:
    dbtriggers.install(connection)
    dbtriggers.install(connection)
    assert dbtriggers.installed(connection)

    dbtriggers.uninstall(connection)
    try:
        assert not dbtriggers.installed(connection)
        services.log_append(data=b"x")
        LogEntry.objects.all().update(data=b"y")  # nothing refuses it now
    finally:
        dbtriggers.install(connection)
    assert dbtriggers.installed(connection)
