"""The journal: appends survive reopening, the hash chain catches edits, a torn last line is cut off."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from modelcourt.guard.journal import ANSWERS_FILE, COMMITS_FILE, Journal, JournalError, NewAnswer


def _answer(i: int, *, shape: tuple[int, ...] = (2, 3), client: str = "198.51.100.4") -> NewAnswer:
    values = (np.arange(np.prod(shape)).reshape(shape) / (i + 1)).astype(np.float32)
    return NewAnswer(
        time=1_700_000_000.0 + i, client=client, tag="ab" * 16, input=values, served=(i + 1) % 10, true=i % 10
    )


def _lines(directory: Path, name: str = ANSWERS_FILE) -> list[str]:
    return (directory / name).read_text().splitlines()


def _rewrite(directory: Path, lines: list[str], name: str = ANSWERS_FILE) -> None:
    (directory / name).write_text("".join(line + "\n" for line in lines))


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A journal with five answers, the first two committed, closed again."""
    journal = Journal(tmp_path)
    journal.append([_answer(i) for i in range(3)])
    journal.append([_answer(3), _answer(4)])
    journal.record_commit(1, 2, "ev-1", "c0ffee")
    journal.close()
    return tmp_path


def test_answers_and_commits_survive_reopening(filled: Path) -> None:
    journal = Journal(filled)
    try:
        assert journal.last_seq == 5
        assert [c.evidence_id for c in journal.commits] == ["ev-1"]
        pending = journal.pending()
        assert [entry.seq for entry in pending] == [3, 4, 5]
        assert pending[0].input.dtype == np.float32
        assert np.array_equal(pending[0].input, _answer(2).input)
        assert (pending[0].served, pending[0].true, pending[0].client) == (3, 2, "198.51.100.4")
        assert journal.append([_answer(5)]) == 4  # the chain goes on where it stopped
    finally:
        journal.close()
    assert [json.loads(line)["seq"] for line in _lines(filled)] == [1, 2, 3, 4, 5, 6]


def test_every_line_links_to_the_one_before(filled: Path) -> None:
    records = [json.loads(line) for line in _lines(filled)]
    assert records[0]["prev"] == "0" * 64
    assert set(records[0]) == {"seq", "time", "client", "tag", "shape", "input", "served", "true", "prev", "digest"}
    for before, record in zip(_lines(filled), records[1:], strict=False):
        assert record["prev"] == hashlib.sha256(before.encode()).hexdigest()


def test_an_edited_value_is_caught(filled: Path) -> None:
    original = _lines(filled)
    lines = list(original)
    lines[2] = lines[2].replace('"served":3', '"served":4')
    _rewrite(filled, lines)
    with pytest.raises(JournalError, match="line 3 does not match its digest"):
        Journal(filled)
    _rewrite(filled, original)  # once repaired, the same process can open it (the refusal let go of the lock)
    Journal(filled).close()


@pytest.mark.parametrize(
    ("index", "message"),
    [(3, "line 5 does not follow the line before it"), (1, "a commit recorded another line 2")],
)
def test_an_edit_with_a_recomputed_digest_is_caught(filled: Path, index: int, message: str) -> None:
    # given a line rewritten consistently in itself (answer 4 is pending, answer 2 the last committed)
    lines = _lines(filled)
    record = json.loads(lines[index])
    record["served"] = 9
    del record["digest"]
    canonical = json.dumps(record, sort_keys=True, separators=(",", ":"))
    record["digest"] = hashlib.sha256(canonical.encode()).hexdigest()
    lines[index] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    _rewrite(filled, lines)
    with pytest.raises(JournalError, match=message):
        Journal(filled)


@pytest.mark.parametrize("change", ["remove", "swap"])
def test_a_removed_or_reordered_line_is_caught(filled: Path, change: str) -> None:
    lines = _lines(filled)
    if change == "remove":
        del lines[3]
    else:
        lines[3], lines[4] = lines[4], lines[3]
    _rewrite(filled, lines)
    with pytest.raises(JournalError, match="altered"):
        Journal(filled)


def test_a_line_cut_short_by_a_crash_is_removed_and_the_chain_goes_on(filled: Path) -> None:
    # given a crash in the middle of writing a sixth line (its answer never left: the fsync came first)
    path = filled / ANSWERS_FILE
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"seq":6,"time":1700000')
    journal = Journal(filled)
    try:
        assert journal.last_seq == 5
        assert path.read_bytes() == whole
        journal.append([_answer(6)])
    finally:
        journal.close()
    reopened = Journal(filled)
    assert reopened.last_seq == 6
    reopened.close()


def test_a_reader_leaves_a_torn_line_alone(filled: Path) -> None:
    path = filled / ANSWERS_FILE
    torn = path.read_bytes() + b'{"seq":6'
    path.write_bytes(torn)
    journal = Journal(filled, readonly=True)
    assert (journal.last_seq, journal.pending_count) == (5, 3)
    journal.close()
    assert path.read_bytes() == torn


def test_damage_in_the_middle_is_not_taken_for_a_torn_line(filled: Path) -> None:
    lines = _lines(filled)
    lines[1] = lines[1][:40]
    _rewrite(filled, lines)
    with pytest.raises(JournalError, match="line 2 is not JSON"):
        Journal(filled)


def test_a_commit_record_beyond_the_answers_means_the_answers_file_was_lost(filled: Path) -> None:
    (filled / ANSWERS_FILE).write_text("")
    with pytest.raises(JournalError, match="truncated or replaced"):
        Journal(filled)


def test_a_commit_must_continue_the_one_before(filled: Path) -> None:
    lines = _lines(filled, COMMITS_FILE)
    record = json.loads(lines[0])
    record["first_seq"] = 2
    _rewrite(filled, [json.dumps(record)], COMMITS_FILE)
    with pytest.raises(JournalError, match="does not continue"):
        Journal(filled)


def test_only_the_oldest_pending_answers_can_be_committed(filled: Path) -> None:
    journal = Journal(filled)
    try:
        with pytest.raises(JournalError, match="oldest pending"):
            journal.record_commit(4, 5, "ev-2", "beef")
        commit = journal.record_commit(3, 4, "ev-2", "beef")
        assert commit.last_digest == json.loads(_lines(filled)[3])["digest"]
        assert [entry.seq for entry in journal.pending()] == [5]
    finally:
        journal.close()


def test_a_second_writer_is_refused_while_the_first_holds_the_journal(tmp_path: Path) -> None:
    first = Journal(tmp_path)
    try:
        with pytest.raises(JournalError, match="in use by another guard process"):
            Journal(tmp_path)
        Journal(tmp_path, readonly=True).close()  # a reader (guard status) is fine
    finally:
        first.close()
    Journal(tmp_path).close()


def test_the_journal_is_private(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.close()
    assert (tmp_path / "j").stat().st_mode & 0o077 == 0
    assert (tmp_path / "j" / ANSWERS_FILE).stat().st_mode & 0o077 == 0


def test_inputs_come_back_exactly_as_float32(tmp_path: Path) -> None:
    values = np.random.default_rng(0).normal(size=(1, 8, 8)).astype(np.float32)
    journal = Journal(tmp_path)
    journal.append([NewAnswer(1.5, "c", "00" * 16, values, 1, 0)])
    journal.close()
    reopened = Journal(tmp_path)
    (entry,) = reopened.pending()
    reopened.close()
    assert entry.shape == (1, 8, 8)
    assert np.array_equal(entry.input, values)
