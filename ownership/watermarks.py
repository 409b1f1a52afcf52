"""Verifiable watermarks: a trigger set derived from a committed random seed (pure).

Anyone holding the seed regenerates exactly the same set, which shows the
claimant could not have picked the triggers adversarially (for example as
transferable adversarial examples): the service drew the seed.
"""

import hashlib
from collections.abc import Sequence

import numpy as np

GENERATOR = "modelcourt-watermark-v1"
MAX_TRIGGERS = 10_000


def generate_watermark(
    *, seed: bytes, count: int, input_shape: Sequence[int], num_classes: int, low: float = 0.0, high: float = 1.0
) -> dict[str, np.ndarray]:
    """Uniform-noise inputs (out of distribution for natural data) with uniformly random labels."""
    if not 1 <= count <= MAX_TRIGGERS:
        raise ValueError(f"count must be between 1 and {MAX_TRIGGERS}")
    if num_classes < 2:
        raise ValueError("a classifier has at least 2 classes")
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError("the input domain needs finite bounds with low < high")
    if not input_shape or any(int(d) < 1 for d in input_shape):
        raise ValueError("input_shape must list positive dimensions (without the batch dimension)")
    stream = int.from_bytes(hashlib.sha256(GENERATOR.encode() + b"\x00" + seed).digest(), "big")
    rng = np.random.Generator(np.random.PCG64(stream))
    inputs = rng.uniform(low, high, size=(count, *(int(d) for d in input_shape))).astype(np.float32)
    labels = rng.integers(0, num_classes, size=count, dtype=np.int64)
    return {"inputs": inputs, "labels": labels}
