"""log_fsck: a full re-derivation of the log finds rows edited behind the triggers and halts signing."""

import logging
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from timestamps import dbtriggers, fsck, merkle, services, tasks
from timestamps.exceptions import LogHaltedError
from timestamps.models import Checkpoint, LogAlarm, LogEntry, LogHead, LogNode, TimestampToken

pytestmark = pytest.mark.django_db


def _log(entries: int = 13) -> None:
    services.log_append_many(entries=[f"entry {i}".encode() for i in range(5)])
    services.checkpoint_publish()
    services.timestamp_digest(digest=b"\x01" * 32)
    services.log_append_many(entries=[f"entry {i}".encode() for i in range(6, entries)])
    services.checkpoint_publish()


def _fsck(*args: str) -> str:
    out = StringIO()
    call_command("log_fsck", *args, stdout=out, stderr=out)
    return out.getvalue()


def _corrupt(**changes: object) -> None:
    dbtriggers.uninstall(connection)  # as an attacker with database access would
    try:
        for model, (lookup, values) in changes.items():
            {"node": LogNode, "entry": LogEntry, "checkpoint": Checkpoint, "token": TimestampToken, "head": LogHead}[
                model
            ].objects.filter(**lookup).update(**values)
    finally:
        dbtriggers.install(connection)


def test_a_sound_log_is_clean() -> None:
    _log()

    report = fsck.log_check()

    assert report.clean, report.summary()
    assert report.size == 13
    assert "13 entries: clean" in _fsck()
    services.log_append(data=b"more")
    assert services.checkpoint_publish().size == 14


def test_an_empty_log_is_clean() -> None:
    assert fsck.log_check().clean


def test_a_replaced_node_is_found_and_halts_checkpoint_signing(caplog: pytest.LogCaptureFixture) -> None:
    # given an interior node rewritten behind the triggers' back (level 1, position 2: leaves 4 and 5)
    _log()
    _corrupt(node=({"key": (1 << 56) | 2}, {"hash": b"\x00" * 32}))

    # when
    with caplog.at_level(logging.ERROR, logger="timestamps.services"), pytest.raises(CommandError, match="halted"):
        _fsck()

    # then
    assert any(r.levelno == logging.ERROR and "log_fsck found" in r.getMessage() for r in caplog.records)
    assert "node 1/2 does not match" in LogAlarm.objects.get().problems
    services.log_append(data=b"more")
    with pytest.raises(LogHaltedError):
        services.checkpoint_publish()
    assert Checkpoint.objects.filter(size=14).count() == 0
    tasks.checkpoint_publish_task()  # the beat task stays quiet and signs nothing
    assert Checkpoint.objects.filter(size=14).count() == 0


def test_clear_needs_a_clean_check_and_then_signing_resumes() -> None:
    _log()
    _corrupt(node=({"key": 3}, {"hash": b"\x00" * 32}))
    with pytest.raises(CommandError):
        _fsck()

    # --clear on a still-broken log lifts nothing
    with pytest.raises(CommandError):
        _fsck("--clear")
    assert LogAlarm.objects.exists()

    # repaired by the operator (the node re-derived), a clean run alone keeps the halt
    right = merkle.leaf_hash(b"entry 3")
    _corrupt(node=({"key": 3}, {"hash": right}))
    assert "stays halted" in _fsck()
    with pytest.raises(LogHaltedError):
        services.checkpoint_publish()

    # and --clear lifts it
    assert "lifted" in _fsck("--clear")
    assert not LogAlarm.objects.exists()
    services.log_append(data=b"more")
    assert services.checkpoint_publish().size == 14


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"entry": ({"index": 7}, {"data": b"rewritten"})}, "entry 7: stored leaf hash does not match"),
        ({"head": ({"id": 1}, {"root_hash": b"\x00" * 32})}, "head's root"),
        ({"checkpoint": ({"size": 5}, {"root_hash": b"\x00" * 32})}, "(size 5): its root does not match"),
        ({"checkpoint": ({"size": 13}, {"note": "forged\n13\nAAAA\n\n\u2014 x abc=\n"})}, "does not verify"),
        ({"token": ({"serial": 5}, {"token": b"\x30\x00"})}, "timestamp token 5"),
        ({"token": ({"serial": 5}, {"message_imprint": b"\x02" * 32})}, "timestamp token 5: its row disagrees"),
    ],
)
def test_each_kind_of_tampering_is_named(changes: dict[str, object], problem: str) -> None:
    _log()
    _corrupt(**changes)

    report = services.log_fsck()

    assert not report.clean
    assert problem in report.summary()
    assert LogAlarm.objects.exists()


def test_a_missing_entry_and_extra_nodes_are_found() -> None:
    _log()
    dbtriggers.uninstall(connection)
    try:
        LogEntry.objects.filter(index=9).delete()
        LogNode.objects.create(key=(5 << 56) | 7, hash=b"\x00" * 32)
    finally:
        dbtriggers.install(connection)

    summary = fsck.log_check().summary()

    assert "entry 9 is missing" in summary
    assert "the head says 13 entries; 9 were re-derived" in summary


def test_planted_nodes_are_counted() -> None:
    _log()
    LogNode.objects.create(key=(5 << 56) | 7, hash=b"\x00" * 32)  # inserting a new key is an append

    assert "tree nodes are stored" in fsck.log_check().summary()


def test_the_check_pages_through_a_log_larger_than_a_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsck, "BATCH", 7)
    monkeypatch.setattr(fsck, "NODE_QUERY_CHUNK", 5)
    services.log_append_many(entries=[f"e{i}".encode() for i in range(100)])
    services.checkpoint_publish()
    assert fsck.log_check().clean

    _corrupt(node=({"key": 97}, {"hash": b"\x00" * 32}))

    assert fsck.log_check().problems == ["node 0/97 does not match the hash re-derived from the entries"]


def test_missing_trailing_entries_are_named() -> None:
    _log()
    dbtriggers.uninstall(connection)
    try:
        LogEntry.objects.filter(index__gte=11).delete()
    finally:
        dbtriggers.install(connection)

    assert "entries 11 to 12 are missing" in fsck.log_check().summary()


def test_a_checkpoint_past_the_log_is_found() -> None:
    # an INSERT of a new row is an append, which the triggers allow
    _log()
    real = Checkpoint.objects.order_by("size").last()
    assert real is not None
    Checkpoint.objects.create(size=99, root_hash=b"\x00" * 32, note="forged", key=real.key, created_at=real.created_at)

    assert "(size 99) is beyond the log of 13 entries" in fsck.log_check().summary()


def test_appends_during_the_check_are_no_false_alarm(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a log that grows (and gets a checkpoint) while the check runs
    _log()
    check_tokens = fsck._check_tokens

    def grow_then_check(size: int, report: fsck.FsckReport) -> None:
        services.log_append_many(entries=[b"late 1", b"late 2"])
        services.checkpoint_publish()
        check_tokens(size, report)

    monkeypatch.setattr(fsck, "_check_tokens", grow_then_check)

    # when
    report = fsck.log_check()

    # then the log as the check began is clean, and the next run covers the rest
    assert report.clean, report.summary()
    assert report.size == 13
    monkeypatch.undo()
    assert fsck.log_check().size == 15


def test_while_halted_the_api_answers_503_with_a_code_and_old_checkpoints_stay_readable(
    api_client,  # type: ignore[no-untyped-def]
) -> None:
    _log()
    _corrupt(node=({"key": 3}, {"hash": b"\x00" * 32}))
    services.log_fsck()

    latest = api_client.get("/api/v1/log/checkpoint")
    signed = api_client.get("/api/v1/log/checkpoint", {"size": 13})

    assert latest.status_code == 503
    assert latest.json()["code"] == "log_halted"
    assert signed.status_code == 200
