"""Keyed response watermarking after DAWN (Szyller et al., 2021): a secret fraction of answers is wrong on purpose.

Whether an input is watermarked, and which wrong label it gets, follow from an HMAC of the input under
the owner's key, so the same input always gets the same answer (an attacker learns nothing by asking
twice) and nobody without the key can tell which answers were changed. A model trained on the API's
answers learns the wrong labels too; the journaled (input, wrong label) pairs are the evidence.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_KEY_BYTES", "ResponseWatermark", "canonical_input", "client_tag"]

MIN_KEY_BYTES = 32
_SELECT_PREFIX = b"mc-guard-v1|"
_CLIENT_PREFIX = b"mc-guard-client|"
_TAG_HEX_CHARS = 32
_MAX_KEYED_SHAPES = 16


def canonical_input(x: npt.ArrayLike) -> bytes:
    """The bytes the selection is keyed on: b"shape:1,8,8;" then the values as little-endian float32."""
    values = np.ascontiguousarray(x, dtype="<f4")
    shape = ",".join(str(d) for d in values.shape)
    return b"shape:" + shape.encode() + b";" + values.tobytes()


def client_tag(key: bytes, client_id: str) -> str:
    """The pseudonym the service sees for a client: 32 hex characters of an HMAC, never the raw id."""
    digest = hmac.new(key, _CLIENT_PREFIX + client_id.encode(), hashlib.sha256).hexdigest()
    return digest[:_TAG_HEX_CHARS]


def _within(labels: npt.NDArray[np.integer], num_classes: int) -> bool:
    """Whether every (integer) label is in 0..num_classes-1; a small batch is checked without NumPy's reductions."""
    if labels.size <= 64:
        values = labels.reshape(-1).tolist()
        return min(values) >= 0 and max(values) < num_classes
    return bool(labels.min() >= 0 and labels.max() < num_classes)


class ResponseWatermark:
    """Decides which answers to change and how; pure and thread-safe (holds only the key)."""

    def __init__(self, key: bytes, num_classes: int, rate: float = 0.005) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the guard key must be at least {MIN_KEY_BYTES} bytes")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"a watermark needs at least 2 classes, got {num_classes!r}")
        if not 0.0 <= float(rate) <= 1.0:
            raise ValueError(f"the watermark rate is a fraction between 0 and 1, got {rate!r}")
        self._key = key
        self.num_classes = num_classes
        self.rate = float(rate)
        # int < float compares exactly in Python, so this is the contract's `< rate * 2**64`
        self._bound = self.rate * 2.0**64
        self._keyed = hmac.new(key, _SELECT_PREFIX, hashlib.sha256)
        # the keyed HMAC state after the shape prefix, per row shape seen (a few; cleared when there are many)
        self._keyed_shapes: dict[tuple[int, ...], hmac.HMAC] = {}

    def __repr__(self) -> str:
        return f"ResponseWatermark(num_classes={self.num_classes}, rate={self.rate})"

    def selects(self, x: npt.ArrayLike) -> tuple[bool, bytes]:
        """Whether this one input is watermarked, and the HMAC digest that decided it."""
        mac = self._keyed.copy()
        mac.update(canonical_input(x))
        digest = mac.digest()
        return int.from_bytes(digest[:8], "big") < self._bound, digest

    def wrong_label(self, true_label: int, digest: bytes) -> int:
        """The served label for a selected input: never the true one, uniform over the others."""
        shift = 1 + int.from_bytes(digest[8:16], "big") % (self.num_classes - 1)
        return (int(true_label) + shift) % self.num_classes

    def serve(
        self, x: npt.ArrayLike, label: int, scores: npt.NDArray[np.floating] | None = None
    ) -> tuple[int, npt.NDArray[np.floating] | None, bool]:
        """The served label, the served scores (a permutation of the given ones) and whether it was watermarked.

        ``label`` is the model's answer (the argmax of ``scores`` when scores are given). A watermarked
        answer swaps the score of the true label with that of the wrong one, so the served label is the
        argmax and probabilities still sum to one.
        """
        true_label = self._check_label(label)
        selected, digest = self.selects(x)
        if not selected:
            return true_label, None if scores is None else np.array(scores, copy=True), False
        served = self.wrong_label(true_label, digest)
        if scores is None:
            return served, None, True
        out = np.array(scores, copy=True)
        if out.shape != (self.num_classes,):
            raise ValueError(f"scores must have shape [{self.num_classes}], got {list(out.shape)}")
        out[[true_label, served]] = out[[served, true_label]]
        return served, out, True

    def serve_batch(
        self,
        xs: npt.NDArray[np.floating] | npt.NDArray[np.integer],
        labels: npt.ArrayLike,
        scores: npt.NDArray[np.floating] | None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.floating] | None, npt.NDArray[np.bool_]]:
        """``serve`` over the rows of a batch: served labels [N], served scores [N, C] or None, mask [N]."""
        rows = np.asarray(xs)
        true = np.asarray(labels)
        if rows.ndim < 1 or true.shape != (rows.shape[0],):
            raise ValueError(f"need one label per input row: {list(true.shape)} labels for {list(rows.shape)} inputs")
        if true.size and (true.dtype.kind not in "iu" or not _within(true, self.num_classes)):
            raise ValueError(f"labels must be integers in 0..{self.num_classes - 1}")
        n = rows.shape[0]
        picked = self._selected(rows)
        served = true.astype(np.int64, copy=True)
        mask = np.zeros(n, dtype=np.bool_)
        if picked:
            at = [i for i, _ in picked]
            mask[at] = True
            served[at] = [self.wrong_label(int(served[i]), digest) for i, digest in picked]
        if scores is None:
            return served, None, mask
        out = np.array(scores, copy=True)
        if out.shape != (n, self.num_classes):
            raise ValueError(f"scores must have shape [{n}, {self.num_classes}], got {list(out.shape)}")
        if picked:
            # swap each picked row's true and served scores: the served label becomes the argmax
            index = np.flatnonzero(mask)
            true_at, served_at = true[index].astype(np.int64), served[index]
            original_true = out[index, true_at]
            out[index, true_at] = out[index, served_at]
            out[index, served_at] = original_true
        return served, out, mask

    def _selected(self, rows: npt.NDArray[np.floating] | npt.NDArray[np.integer]) -> list[tuple[int, bytes]]:
        """The indices of the selected rows with their digests: ``selects`` per row, the batch converted once.

        Each row is keyed on exactly :func:`canonical_input`'s bytes (the shape prefix, then the row's
        float32 values), so the batch agrees with ``selects`` row by row.
        """
        values = np.ascontiguousarray(rows, dtype="<f4")
        if values.shape[0] == 0:
            return []
        flat = values.reshape(values.shape[0], -1)
        keyed = self._keyed_for(values.shape[1:] if values.ndim > 1 else (1,))  # a scalar row is shape 1
        bound = self._bound
        picked: list[tuple[int, bytes]] = []
        for i in range(flat.shape[0]):
            mac = keyed.copy()
            mac.update(flat[i])
            digest = mac.digest()
            if int.from_bytes(digest[:8], "big") < bound:
                picked.append((i, digest))
        return picked

    def _keyed_for(self, shape: tuple[int, ...]) -> hmac.HMAC:
        """The HMAC state after the prefix ``b"shape:<dims>;"`` that every row of this shape starts with.

        Kept per shape, since requests mostly share one; the states are copied, never updated in place.
        """
        keyed = self._keyed_shapes.get(shape)
        if keyed is None:
            keyed = self._keyed.copy()
            keyed.update(b"shape:" + ",".join(map(str, shape)).encode() + b";")
            if len(self._keyed_shapes) >= _MAX_KEYED_SHAPES:
                self._keyed_shapes.clear()
            self._keyed_shapes[shape] = keyed
        return keyed

    def client_tag(self, client_id: str) -> str:
        """The pseudonym the service sees for ``client_id`` (see :func:`client_tag`)."""
        return client_tag(self._key, client_id)

    def _check_label(self, label: int) -> int:
        if isinstance(label, bool) or not isinstance(label, int | np.integer):
            raise ValueError(f"the label must be an integer, got {type(label).__name__}")
        if not 0 <= int(label) < self.num_classes:
            raise ValueError(f"the label must be in 0..{self.num_classes - 1}, got {int(label)}")
        return int(label)
