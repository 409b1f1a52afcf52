"""Concurrent appenders: gap-free indices, every checkpoint consistent with the one before."""

import base64
import itertools
import multiprocessing

import pytest
from django.db import connections

from tests.timestamps.gocheck import go_verify, require_go
from timestamps import keys, merkle, selectors, services
from timestamps.models import Checkpoint, LogEntry, SigningKey

PROCESSES = 8
APPENDS = 200


def _appender(worker: int) -> None:
    # Runs in a forked child: a fresh connection of its own.
    connections.close_all()
    for i in range(APPENDS):
        services.log_append(data=f"worker {worker} entry {i}".encode())
        if i % 40 == 39:
            services.checkpoint_publish()
    connections.close_all()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_eight_processes_appending_leave_a_gap_free_consistent_log() -> None:
    # given the keys exist before the children race for them
    keys.key_current(SigningKey.Purpose.LOG)
    connections.close_all()

    # when 8 processes append 200 entries each, checkpointing as they go
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_appender, args=(n,)) for n in range(PROCESSES)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=300)
    assert [child.exitcode for child in children] == [0] * PROCESSES
    services.checkpoint_publish()

    # then the size equals the number of appends and indices have no gap
    total = PROCESSES * APPENDS
    assert selectors.log_size() == total
    assert list(LogEntry.objects.values_list("index", flat=True)) == list(range(total))
    payloads = {bytes(d) for d in LogEntry.objects.values_list("data", flat=True)}
    assert payloads == {f"worker {w} entry {i}".encode() for w in range(PROCESSES) for i in range(APPENDS)}

    # and every checkpoint is consistent with the previous one, by our verifier and Go's
    checkpoints = list(Checkpoint.objects.order_by("size"))
    assert len(checkpoints) >= 2
    assert checkpoints[-1].size == total
    consistency = []
    for before, after in itertools.pairwise(checkpoints):
        proof = selectors.log_consistency_proof(first=before.size, second=after.size)
        assert merkle.verify_consistency(
            before.size, after.size, bytes(before.root_hash), bytes(after.root_hash), proof
        )
        consistency.append(
            {"first": before.size, "second": after.size, "hashes_b64": [base64.b64encode(h).decode() for h in proof]}
        )
    require_go()  # skips with the reason, or fails when MODELCOURT_REQUIRE_GO=1
    entry = LogEntry.objects.get(index=total // 2)
    inclusion = {
        "index": entry.index,
        "size": total,
        "leaf_b64": base64.b64encode(bytes(entry.leaf_hash)).decode(),
        "hashes_b64": [
            base64.b64encode(h).decode() for h in selectors.log_inclusion_proof(index=entry.index, size=total)
        ],
    }
    result = go_verify(
        {
            "vkey": keys.log_verifier_key(keys.key_current(SigningKey.Purpose.LOG).record),
            "notes": [c.note for c in checkpoints],
            "inclusion": [inclusion],
            "consistency": consistency,
        }
    )
    assert result.returncode == 0, result.stdout + result.stderr
