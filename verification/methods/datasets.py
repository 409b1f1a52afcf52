"""Tasks the methods are exercised on: scikit-learn's bundled digits and a generated task that memorises.

Each task is split once, by seed, into three disjoint parts with distinct roles:

- ``owner``: the claimant's private training data (the samples dataset inference calls private);
- ``public``: data anyone may hold: reference panels, independent models and thieves' queries use it;
- ``holdout``: used by nobody for training; the "public" side of dataset inference and test accuracy.

Nothing is downloaded: digits ship with scikit-learn and the synthetic task is generated from the seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["TaskData", "digits_task", "synthetic_task", "task_by_name"]

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TaskData:
    """A classification task in ``[low, high]`` with its owner / public / holdout split."""

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    low: float
    high: float
    owner_x: FloatArray
    owner_y: LabelArray
    public_x: FloatArray
    public_y: LabelArray
    holdout_x: FloatArray
    holdout_y: LabelArray
    note: str = ""

    def __post_init__(self) -> None:
        for part in ("owner", "public", "holdout"):
            x, y = getattr(self, f"{part}_x"), getattr(self, f"{part}_y")
            if len(x) != len(y) or tuple(x.shape[1:]) != self.input_shape:
                raise ValueError(f"the {part} split of {self.name} does not fit shape {self.input_shape}")

    @property
    def digest(self) -> str:
        """SHA-256 over every split's bytes: models cached for one split are never reused for another."""
        h = hashlib.sha256(self.name.encode())
        for part in ("owner", "public", "holdout"):
            for arr in (getattr(self, f"{part}_x"), getattr(self, f"{part}_y")):
                h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()


def _stratified_split(
    y: LabelArray, sizes: tuple[int, int], rng: np.random.Generator
) -> tuple[LabelArray, LabelArray, LabelArray]:
    """Indices of three disjoint parts: the first two of about ``sizes``, the rest third, each class spread evenly."""
    total = len(y)
    parts: list[list[int]] = [[], [], []]
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        a = round(len(idx) * sizes[0] / total)
        b = round(len(idx) * sizes[1] / total)
        parts[0].extend(idx[:a])
        parts[1].extend(idx[a : a + b])
        parts[2].extend(idx[a + b :])
    return tuple(rng.permutation(np.asarray(p, dtype=np.int64)) for p in parts)  # type: ignore[return-value]


def digits_task(seed: int = 0, *, owner: int = 600, public: int = 800) -> TaskData:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1], as 64 features: 600 owner, 800 public, 397 holdout."""
    from sklearn.datasets import load_digits  # type: ignore[import-untyped]

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    y = np.asarray(bunch.target, dtype=np.int64)
    if owner + public >= len(y):
        raise ValueError(f"owner + public must leave a holdout, got {owner} + {public} of {len(y)}")
    rng = np.random.default_rng([seed, 0xD161])
    a, b, c = _stratified_split(y, (owner, public), rng)
    return TaskData(
        name="digits",
        num_classes=10,
        input_shape=(64,),
        low=0.0,
        high=1.0,
        owner_x=x[a],
        owner_y=y[a],
        public_x=x[b],
        public_y=y[b],
        holdout_x=x[c],
        holdout_y=y[c],
        note="Digits generalise well from few samples, so dataset inference has little power on them.",
    )


def synthetic_task(
    seed: int = 0,
    *,
    num_classes: int = 10,
    dim: int = 64,
    owner: int = 500,
    public: int = 1500,
    holdout: int = 1000,
    noise: float = 0.22,
    label_noise: float = 0.15,
) -> TaskData:
    """Overlapping Gaussian classes in [0, 1]^dim with some labels flipped: a model fits its training set
    only by memorising it, which is the regime where dataset inference has power.

    The class means are fixed by ``seed``; every split is drawn from the same distribution.
    """
    if not 0.0 <= label_noise < 1.0 or noise <= 0:
        raise ValueError("need noise > 0 and 0 <= label_noise < 1")
    rng = np.random.default_rng([seed, 0x5E7])
    means = rng.uniform(0.25, 0.75, size=(num_classes, dim))
    n = owner + public + holdout
    y = rng.integers(0, num_classes, size=n)
    x = np.clip(means[y] + rng.normal(0.0, noise, size=(n, dim)), 0.0, 1.0).astype(np.float32)
    flip = rng.random(n) < label_noise
    y = np.where(flip, rng.integers(0, num_classes, size=n), y).astype(np.int64)
    return TaskData(
        name="synthetic",
        num_classes=num_classes,
        input_shape=(dim,),
        low=0.0,
        high=1.0,
        owner_x=x[:owner],
        owner_y=y[:owner],
        public_x=x[owner : owner + public],
        public_y=y[owner : owner + public],
        holdout_x=x[owner + public :],
        holdout_y=y[owner + public :],
        note="Generated: overlapping classes with flipped labels, so training samples are memorised.",
    )


def task_by_name(name: str, seed: int = 0) -> TaskData:
    """``digits`` or ``synthetic``."""
    if name == "digits":
        return digits_task(seed)
    if name == "synthetic":
        return synthetic_task(seed)
    raise ValueError(f"unknown task {name!r}; expected 'digits' or 'synthetic'")
