"""Evidence `.npz` files: strict parsing and validation, never unpickling (no Django).

Each array's `.npy` header (dtype and shape, a Python literal numpy parses without evaluating code)
is checked before its data is read, so a hostile file can neither run code nor make us allocate more
than the evidence it claims to be.
"""

import io
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import numpy as np

MAX_EVIDENCE_BYTES = 64 << 20
MAX_UNPACKED_BYTES = 1 << 30
MAX_SAMPLES = 10_000
_FLOAT = np.dtype("<f4")
_LABEL = np.dtype("<i8")
_CLIENT = np.dtype("u1")
_TIME = np.dtype("<f8")
CLIENT_TAG_BYTES = 16  # an api_watermark row's client: the guard's keyed tag, never the raw client id
# kind -> (array, dtype, fewest samples); labels are the only non-input array
_EXPECTED: dict[str, tuple[tuple[str, np.dtype[Any], int], ...]] = {
    "watermark": (("inputs", _FLOAT, 1), ("labels", _LABEL, 1)),
    "fingerprint": (("inputs", _FLOAT, 1), ("labels", _LABEL, 1)),
    "dataset": (("members", _FLOAT, 10), ("nonmembers", _FLOAT, 10)),
    # a guard's journal batch: watermarked inputs, the wrong labels served, each row's client tag and time
    "api_watermark": (("inputs", _FLOAT, 1), ("labels", _LABEL, 1), ("clients", _CLIENT, 1), ("served_at", _TIME, 1)),
}
# arrays with one row per input that are not inputs themselves: their expected shape after the row count
_PER_ROW: dict[str, tuple[int, ...]] = {"labels": (), "clients": (CLIENT_TAG_BYTES,), "served_at": ()}


class EvidenceRejected(ValueError):  # noqa: N818 (a verdict on the upload, not a program error)
    """The evidence cannot be committed; `reason` names the array and what was expected."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def load_evidence(
    data: bytes,
    *,
    kind: str,
    input_shape: Sequence[int],
    num_classes: int,
    max_bytes: int = MAX_EVIDENCE_BYTES,
    max_unpacked_bytes: int = MAX_UNPACKED_BYTES,
) -> dict[str, np.ndarray]:
    """Parse and validate an evidence `.npz`; EvidenceRejected with a precise reason on any deviation."""
    if kind not in _EXPECTED:
        _reject(f"kind must be one of {', '.join(_EXPECTED)}")
    if len(data) > max_bytes:
        _reject(f"the evidence file is {len(data)} bytes; the limit is {max_bytes}")
    if data[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        _reject("the evidence is not an .npz archive (save it with numpy.savez or numpy.savez_compressed)")
    shape = tuple(int(d) for d in input_shape)
    expected = _EXPECTED[kind]
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            headers = _headers(npz.zip, kind, [name for name, _, _ in expected])
            _check_headers(headers, expected, shape, max_unpacked_bytes)
            arrays = {name: np.ascontiguousarray(npz[name]) for name, _, _ in expected}
    except EvidenceRejected:
        raise
    except (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error):
        # the library's text may quote member names the uploader chose: our own sentence only
        _reject("the .npz archive is damaged (a member cannot be read or decompressed)")
    for name, _, _ in expected:
        _check_finite(name, arrays[name])
    if "served_at" in arrays and bool((arrays["served_at"] < 0).any()):
        _reject("array 'served_at' holds a negative time (expected Unix seconds)")
    if "labels" in arrays:
        _check_labels(arrays["labels"], num_classes)
    return arrays


def dump_evidence(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The arrays as compressed `.npz` bytes (object arrays refused: no pickles)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, allow_pickle=False, **{name: np.asarray(array) for name, array in arrays.items()})
    return buffer.getvalue()


def _reject(reason: str) -> NoReturn:
    raise EvidenceRejected(reason)


def _headers(
    archive: zipfile.ZipFile, kind: str, expected: list[str]
) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Each array's shape and dtype, read from its `.npy` header without touching its data."""
    entries = archive.namelist()
    names = [entry.removesuffix(".npy") if entry.endswith(".npy") else entry for entry in entries]
    if len(set(names)) != len(names):
        _reject("the archive holds an array twice")
    missing = [name for name in expected if name not in names]
    extra = sorted(set(names) - set(expected))
    if missing or extra:
        problems = ([f"missing: {', '.join(missing)}"] if missing else []) + (
            [f"{len(extra)} unexpected member(s)"] if extra else []  # names are the uploader's text
        )
        _reject(f"{kind} evidence must hold exactly the arrays {', '.join(expected)} ({'; '.join(problems)})")
    headers = {}
    for name in expected:
        entry = entries[names.index(name)]
        if not entry.endswith(".npy"):
            _reject(f"array {name!r} is not stored as a .npy member")
        with archive.open(entry) as member:
            try:
                version = np.lib.format.read_magic(member)
            except ValueError:
                _reject(f"array {name!r} is not a .npy array")
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                _reject(f"array {name!r} uses .npy format version {version[0]}.{version[1]}; expected 1.0 or 2.0")
        headers[name] = (tuple(shape), dtype)
    return headers


def _check_headers(
    headers: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
    expected: Sequence[tuple[str, np.dtype[Any], int]],
    input_shape: tuple[int, ...],
    max_unpacked_bytes: int,
) -> None:
    unpacked = 0
    for name, want, fewest in expected:
        shape, dtype = headers[name]
        if dtype.hasobject:
            _reject(f"array {name!r} holds Python objects (dtype object); save plain {want.name} arrays")
        if dtype != want:
            shown = dtype.name if dtype.isnative else dtype.str
            _reject(f"array {name!r} has dtype {shown}; expected {want.name} (convert with .astype(np.{want.name}))")
        if name in _PER_ROW:
            count = headers["inputs"][0][0]  # inputs come first and are checked by now
            want_shape = (count, *_PER_ROW[name])
            if shape != want_shape:
                what = "one label per input" if name == "labels" else "one row per input"
                _reject(f"array {name!r} has shape {list(shape)}; expected {list(want_shape)} ({what})")
        else:
            if len(shape) != len(input_shape) + 1 or shape[1:] != input_shape:
                _reject(f"array {name!r} has shape {list(shape)}; expected [N, {', '.join(map(str, input_shape))}]")
            if not fewest <= shape[0] <= MAX_SAMPLES:
                _reject(f"array {name!r} holds {shape[0]} samples; expected between {fewest} and {MAX_SAMPLES}")
        unpacked += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if unpacked > max_unpacked_bytes:
        _reject(f"the evidence unpacks to {unpacked} bytes; the limit is {max_unpacked_bytes}")


def _check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if not finite.all():
        _reject(f"array {name!r} holds NaN or infinite values (first in sample {int(np.argmin(finite))})")


def _check_labels(labels: np.ndarray, num_classes: int) -> None:
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if outside.size:
        index = int(outside[0])
        _reject(
            f"array 'labels' holds {int(labels[index])} at index {index}; "
            f"labels must be in [0, {num_classes}) for {num_classes} classes"
        )
