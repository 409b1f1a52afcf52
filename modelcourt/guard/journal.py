"""The append-only journal of watermarked answers, hash-chained, and the record of which of them were committed.

Two JSON-lines files in one private directory:

``answers.jsonl``  one line per watermarked answer: {seq, time, client, tag, shape, input, served, true, prev,
                   digest}. ``prev`` is the SHA-256 of the previous line (64 zeros for the first), ``digest`` the
                   SHA-256 of the line's own canonical JSON without ``digest``. Each append is flushed and fsynced
                   before the answer leaves, so a crash loses nothing that was answered.
``commits.jsonl``  one line per batch the service accepted: {first_seq, last_seq, evidence_id, commitment,
                   committed_at, last_digest}.

Opening re-reads both and checks the chain: an edited, removed or reordered line is a JournalError. A last
line without its newline is a write the crash cut short (its answer never left) and is cut off. Memory stays
small: only the file offsets of uncommitted answers are kept.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

__all__ = ["ANSWERS_FILE", "COMMITS_FILE", "Commit", "Entry", "Journal", "JournalError", "NewAnswer"]

ANSWERS_FILE = "answers.jsonl"
COMMITS_FILE = "commits.jsonl"
LOCK_FILE = "journal.lock"
GENESIS = "0" * 64
_ENTRY_KEYS = frozenset({"seq", "time", "client", "tag", "shape", "input", "served", "true", "prev", "digest"})

logger = logging.getLogger("modelcourt.guard")


class JournalError(Exception):
    """The journal cannot be used: damaged, tampered with, or in use by another process."""


@dataclass(frozen=True)
class NewAnswer:
    """What the guard hands the journal for one watermarked answer."""

    time: float
    client: str
    tag: str
    input: npt.NDArray[np.float32]
    served: int
    true: int


@dataclass(frozen=True)
class Entry:
    """One journaled answer, as read back."""

    seq: int
    time: float
    client: str
    tag: str
    shape: tuple[int, ...]
    input: npt.NDArray[np.float32]
    served: int
    true: int
    digest: str


@dataclass(frozen=True)
class Commit:
    """One batch the service accepted."""

    first_seq: int
    last_seq: int
    evidence_id: str
    commitment: str
    committed_at: str
    last_digest: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "evidence_id": self.evidence_id,
            "commitment": self.commitment,
            "committed_at": self.committed_at,
            "last_digest": self.last_digest,
        }


@dataclass(frozen=True)
class _Pending:
    seq: int
    time: float
    offset: int
    digest: str


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _write_all(handle: IO[bytes], data: bytes) -> None:
    """Write every byte to an unbuffered file and fsync it."""
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if not written:
            raise OSError("the journal file accepted no bytes")
        view = view[written:]
    os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """One guard process's journal. Thread-safe; one writer process per directory (an advisory lock enforces it)."""

    def __init__(self, directory: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.directory = Path(directory)
        self.readonly = readonly
        self._lock = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        self._answers: IO[bytes] | None = None
        self._commits: IO[bytes] | None = None
        self._reader: IO[bytes] | None = None
        self.last_seq = 0
        self.last_line_hash = GENESIS
        self.commits: list[Commit] = []
        self._pending: list[_Pending] = []
        if readonly:
            if not self.directory.is_dir():
                raise JournalError(f"there is no journal at {self.directory}")
        else:
            self._prepare_directory()
        try:
            self._load()
        except BaseException:
            self.close()  # let go of the lock: the caller may repair the directory and try again
            raise
        if not readonly:
            # unbuffered: a failed write leaves nothing in a buffer to be written later
            self._answers = open(self.directory / ANSWERS_FILE, "ab", buffering=0)  # noqa: SIM115 -- held until close()
            self._commits = open(self.directory / COMMITS_FILE, "ab", buffering=0)  # noqa: SIM115
            self._reader = open(self.directory / ANSWERS_FILE, "rb")  # noqa: SIM115

    # --- opening ------------------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = open(self.directory / LOCK_FILE, "ab")  # noqa: SIM115 -- the lock lives as long as the journal
        except OSError as exc:
            raise JournalError(f"cannot use the journal directory {self.directory}: {exc.strerror}") from None
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise JournalError(
                f"the journal at {self.directory} is in use by another guard process; "
                "give each serving process its own MODELCOURT_GUARD_JOURNAL directory"
            ) from None
        self._lock_file = lock
        for name in (ANSWERS_FILE, COMMITS_FILE):
            path = self.directory / name
            if not path.exists():
                path.touch(mode=0o600)
        _fsync_directory(self.directory)

    def _load(self) -> None:
        """Commits first (they are few), then the answers: only uncommitted ones are kept, as file offsets."""
        self._read_commits(self.directory / COMMITS_FILE)
        committed = self.commits[-1].last_seq if self.commits else 0
        ends = {commit.last_seq: commit for commit in self.commits}
        for offset, record in self._read_answers(self.directory / ANSWERS_FILE):
            seq = record["seq"]
            if seq in ends and ends[seq].last_digest != record["digest"]:
                raise JournalError(f"the journal was altered: a commit recorded another line {seq}")
            if seq > committed:
                self._pending.append(_Pending(seq, float(record["time"]), offset, record["digest"]))
        if committed > self.last_seq:
            raise JournalError(
                f"{COMMITS_FILE} records answers up to {committed} as committed, but the journal ends at "
                f"{self.last_seq}: the answers file was truncated or replaced"
            )

    def _lines(self, path: Path) -> Iterator[tuple[int, bytes]]:
        """(offset, line without its newline) for every complete line; a torn last line is cut off (or skipped)."""
        if not path.exists():
            return
        offset = 0
        with open(path, "rb") as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    self._cut_torn_line(path, offset, len(raw))
                    return
                yield offset, raw[:-1]
                offset += len(raw)

    def _cut_torn_line(self, path: Path, offset: int, size: int) -> None:
        logger.warning(
            "journal %s ends with a %d-byte line cut short by a crash (its answer never left); %s",
            path.name,
            size,
            "ignored" if self.readonly else "removed",
        )
        if not self.readonly:
            with open(path, "r+b") as handle:
                handle.truncate(offset)
                handle.flush()
                os.fsync(handle.fileno())

    def _read_answers(self, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every line, checked against its digest and the line before it."""
        for offset, raw in self._lines(path):
            record = self._checked_record(raw, where=f"{path.name} line {self.last_seq + 1}")
            self.last_line_hash = hashlib.sha256(raw).hexdigest()
            self.last_seq = record["seq"]
            yield offset, record

    def _checked_record(self, raw: bytes, *, where: str) -> dict[str, Any]:
        try:
            record = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise JournalError(f"the journal is damaged: {where} is not JSON") from None
        if not isinstance(record, dict) or set(record) != _ENTRY_KEYS:
            raise JournalError(f"the journal is damaged: {where} does not have the journal's fields")
        if not isinstance(record["seq"], int) or isinstance(record["seq"], bool):
            raise JournalError(f"the journal is damaged: {where} has no sequence number")
        body = {key: value for key, value in record.items() if key != "digest"}
        if record["digest"] != _sha256(_canonical(body)):
            raise JournalError(f"the journal was altered: {where} does not match its digest")
        if record["seq"] != self.last_seq + 1:
            raise JournalError(f"the journal was altered: {where} has sequence number {record['seq']!r}")
        if record["prev"] != self.last_line_hash:
            raise JournalError(f"the journal was altered: {where} does not follow the line before it")
        if not isinstance(record["time"], int | float) or isinstance(record["time"], bool):
            raise JournalError(f"the journal is damaged: {where} has no time")
        return record

    @staticmethod
    def _entry(record: dict[str, Any], digest: str, where: str) -> Entry:
        try:
            shape = tuple(int(d) for d in record["shape"])
            values = np.asarray(record["input"], dtype=np.float32).reshape(shape)
            return Entry(
                seq=int(record["seq"]),
                time=float(record["time"]),
                client=str(record["client"]),
                tag=str(record["tag"]),
                shape=shape,
                input=values,
                served=int(record["served"]),
                true=int(record["true"]),
                digest=digest,
            )
        except (TypeError, ValueError):
            raise JournalError(f"the journal is damaged: {where} holds values of the wrong type") from None

    def _read_commits(self, path: Path) -> None:
        for number, (_, raw) in enumerate(self._lines(path), start=1):
            where = f"{path.name} line {number}"
            try:
                record = json.loads(raw)
                commit = Commit(**record)
            except (ValueError, TypeError, RecursionError):
                raise JournalError(f"the commit record is damaged: {where}") from None
            expected_first = self.commits[-1].last_seq + 1 if self.commits else 1
            if commit.first_seq != expected_first or commit.last_seq < commit.first_seq:
                raise JournalError(f"the commit record is damaged: {where} does not continue the one before it")
            self.commits.append(commit)

    # --- writing ------------------------------------------------------------------------------

    def append(self, answers: Sequence[NewAnswer]) -> int:
        """Journal answers (one fsync for all of them); the number pending after them. OSError when the disk fails."""
        with self._lock:
            if not answers:
                return len(self._pending)
            handle = self._writable(self._answers)
            start = handle.tell()
            lines: list[bytes] = []
            pending: list[_Pending] = []
            seq, prev, offset = self.last_seq, self.last_line_hash, start
            for answer in answers:
                seq += 1
                record = self._record(seq, prev, answer)
                line = (_canonical(record) + "\n").encode()
                lines.append(line)
                pending.append(_Pending(seq, answer.time, offset, record["digest"]))
                prev = hashlib.sha256(line[:-1]).hexdigest()
                offset += len(line)
            try:
                _write_all(handle, b"".join(lines))
            except OSError:
                # leave no half-written tail for the next append to build on
                handle.truncate(start)
                raise
            self.last_seq, self.last_line_hash = seq, prev
            self._pending.extend(pending)
            return len(self._pending)

    @staticmethod
    def _record(seq: int, prev: str, answer: NewAnswer) -> dict[str, Any]:
        values = np.asarray(answer.input, dtype=np.float32)
        record: dict[str, Any] = {
            "seq": seq,
            "time": float(answer.time),
            "client": answer.client,
            "tag": answer.tag,
            "shape": list(values.shape),
            "input": values.reshape(-1).tolist(),
            "served": int(answer.served),
            "true": int(answer.true),
            "prev": prev,
        }
        if not math.isfinite(record["time"]):
            raise ValueError("the answer's time is not finite")
        record["digest"] = _sha256(_canonical(record))
        return record

    def record_commit(self, first_seq: int, last_seq: int, evidence_id: str, commitment: str) -> Commit:
        """Record that the service accepted answers first_seq..last_seq (the oldest pending ones)."""
        with self._lock:
            handle = self._writable(self._commits)
            batch = self._pending[: last_seq - first_seq + 1]
            if not batch or batch[0].seq != first_seq or batch[-1].seq != last_seq:
                raise JournalError(f"answers {first_seq}..{last_seq} are not the oldest pending ones")
            commit = Commit(
                first_seq=first_seq,
                last_seq=last_seq,
                evidence_id=evidence_id,
                commitment=commitment,
                committed_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                last_digest=batch[-1].digest,
            )
            start = handle.tell()
            try:
                _write_all(handle, (_canonical(commit.as_dict()) + "\n").encode())
            except OSError:
                handle.truncate(start)
                raise
            self.commits.append(commit)
            del self._pending[: len(batch)]
            return commit

    def _writable(self, handle: IO[bytes] | None) -> IO[bytes]:
        if handle is None or handle.closed:
            raise JournalError("the journal is read-only or closed")
        return handle

    # --- reading ------------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    @property
    def committed_seq(self) -> int:
        with self._lock:
            return self.commits[-1].last_seq if self.commits else 0

    def oldest_pending_time(self) -> float | None:
        """When the oldest uncommitted answer was served (unix seconds), or None when nothing is pending."""
        with self._lock:
            return self._pending[0].time if self._pending else None

    def pending(self, limit: int | None = None) -> list[Entry]:
        """The oldest uncommitted answers (at most ``limit``), read back from the file and checked."""
        with self._lock:
            chosen = self._pending if limit is None else self._pending[:limit]
            reader = self._reader if self._reader is not None else open(self.directory / ANSWERS_FILE, "rb")  # noqa: SIM115
            try:
                return [self._read_at(reader, p) for p in chosen]
            finally:
                if reader is not self._reader:
                    reader.close()

    @staticmethod
    def _read_at(reader: IO[bytes], pending: _Pending) -> Entry:
        reader.seek(pending.offset)
        raw = reader.readline().rstrip(b"\n")
        where = f"{ANSWERS_FILE} line {pending.seq}"
        try:
            record = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            raise JournalError(f"the journal changed under the guard: {where} is not JSON") from None
        if not isinstance(record, dict) or set(record) != _ENTRY_KEYS:
            raise JournalError(f"the journal changed under the guard: {where}")
        digest = record.pop("digest")
        if digest != pending.digest or digest != _sha256(_canonical(record)) or record["seq"] != pending.seq:
            raise JournalError(f"the journal changed under the guard: {where}")
        return Journal._entry(record, digest, where)

    def close(self) -> None:
        with self._lock:
            for handle in (self._answers, self._commits, self._reader, self._lock_file):
                if handle is not None and not handle.closed:
                    handle.close()
