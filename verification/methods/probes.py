"""Endpoint sightings: a fixed probe set, the labels an endpoint gave it, and the digest that is time-stamped.

A model file is sighted by its digest. An endpoint has no digest, so it is sighted by its behaviour:
the service draws a probe set from a fresh seed, queries the endpoint, and time-stamps the digest of
the transcript (URL, seed, labels). When a later dispute names the same endpoint, the run sends the
same probes again; if the answers still agree (at least :data:`MIN_AGREEMENT`), the endpoint served the
same model at the sighting's time, and the sighting counts as a first known time of the suspect.

Pure NumPy: queries go through a :class:`verification.methods.suspects.Suspect` made by the caller.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_AGREEMENT", "PROBES", "agreement", "probe_inputs", "probe_spec", "transcript_digest"]

PROBES = 32
# the share of probe labels the endpoint must give again for its sighting to count
MIN_AGREEMENT = 0.9
_GENERATOR = b"modelcourt-probes-v1\x00"


def probe_inputs(*, seed: bytes, count: int, input_shape: Sequence[int]) -> npt.NDArray[np.float32]:
    """``count`` inputs drawn uniformly from [0, 1) from ``seed``: anyone with the seed draws the same set."""
    if count < 1 or not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError("a probe set needs at least one input of a positive shape")
    stream = int.from_bytes(hashlib.sha256(_GENERATOR + seed).digest(), "big")
    rng = np.random.Generator(np.random.PCG64(stream))
    return rng.random((count, *(int(d) for d in input_shape)), dtype=np.float32)


def transcript_digest(*, url: str, seed: bytes, labels: Sequence[int]) -> str:
    """Hex SHA-256 over a canonical JSON transcript of one probing: what is time-stamped."""
    body = {"url": url, "seed": seed.hex(), "labels": [int(v) for v in labels], "version": 1}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def agreement(recorded: Sequence[int], answered: Sequence[int]) -> float:
    """The share of probes whose label is the one recorded at the sighting."""
    a, b = np.asarray(recorded, dtype=np.int64), np.asarray(answered, dtype=np.int64)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("both transcripts need the same, non-zero number of labels")
    return float((a == b).mean())


def probe_spec(
    *,
    url: str,
    protocol: str,
    model_name: str,
    output_kind: str,
    input_shape: Sequence[int],
    num_classes: int,
    seeds: dict[str, str],
) -> dict[str, Any]:
    """What :func:`verification.egress.probe_relayed` takes: the endpoint and one probe set per id -> hex seed."""
    return {
        "suspect": {
            "kind": "http",
            "url": url,
            "protocol": protocol,
            "model_name": model_name,
            "output_kind": output_kind,
            "budget": PROBES * len(seeds),
        },
        "num_classes": int(num_classes),
        "input_shape": [int(d) for d in input_shape],
        "count": PROBES,
        "probes": [{"id": key, "seed": seed} for key, seed in seeds.items()],
    }
