"""Commitments to ownership evidence: canonical digests, pure (no Django).

The server and the offline client (`modelcourt receipt verify`) both compute
these, so a receipt can be checked without trusting the server.

- evidence digest: SHA-256 over the arrays of an evidence set, in name order,
  each framed as name, dtype, shape and little-endian C-order bytes, so the
  digest does not depend on how the .npz file was zipped;
- commitment: SHA-256 over the RFC 8785 canonical JSON of
  {scheme, model_digest, evidence_digest, kind, salt, seed?}.
"""

import hashlib
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

SCHEME = "modelcourt-commitment-v1"
KINDS = ("watermark", "fingerprint", "dataset", "api_watermark")
SALT_BYTES = 32


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) encoding for the subset we use: objects, arrays, strings, integers, booleans, null."""
    return _jcs(value).encode()


def _jcs(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise ValueError("integers beyond 2**53 - 1 are not interoperable in JSON")
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_jcs(item) for item in value) + "]"
    if isinstance(value, Mapping):
        if not all(isinstance(key, str) for key in value):
            raise TypeError("object keys must be strings")
        # RFC 8785 sorts keys by their UTF-16 code units.
        keys = sorted(value, key=lambda key: key.encode("utf-16-be"))
        return "{" + ",".join(f"{_jcs(key)}:{_jcs(value[key])}" for key in keys) + "}"
    raise TypeError(f"cannot canonicalise {type(value).__name__} (floats are deliberately unsupported)")


def evidence_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """Hex SHA-256 of an evidence set's arrays, independent of the .npz container."""
    digest = hashlib.sha256(b"modelcourt-evidence-v1\x00")
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        if array.dtype.hasobject:
            raise TypeError(f"array {name!r} holds Python objects")
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        header = canonical_json({"name": name, "dtype": little.dtype.str, "shape": list(little.shape)})
        data = little.tobytes()
        digest.update(struct.pack(">Q", len(header)) + header + struct.pack(">Q", len(data)) + data)
    return digest.hexdigest()


def commitment_document(
    *, model_digest: str, evidence_digest: str, kind: str, salt: str, seed: str | None = None
) -> dict[str, str]:
    """The object whose canonical JSON is hashed into a commitment."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    for name, value in (("model_digest", model_digest), ("evidence_digest", evidence_digest), ("salt", salt)):
        if len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
            raise ValueError(f"{name} must be 64 lowercase hex digits")
    document = {
        "scheme": SCHEME,
        "model_digest": model_digest,
        "evidence_digest": evidence_digest,
        "kind": kind,
        "salt": salt,
    }
    if seed is not None:
        document["seed"] = seed
    return document


def commitment(*, model_digest: str, evidence_digest: str, kind: str, salt: str, seed: str | None = None) -> str:
    """Hex SHA-256 of the canonical commitment document."""
    document = commitment_document(
        model_digest=model_digest, evidence_digest=evidence_digest, kind=kind, salt=salt, seed=seed
    )
    return hashlib.sha256(canonical_json(document)).hexdigest()
