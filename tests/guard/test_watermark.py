"""The response watermark: keyed, deterministic selection at the configured rate, and consistent wrong answers."""

import hashlib
import hmac

import numpy as np
import pytest
from scipy import stats  # type: ignore[import-untyped]

from modelcourt.guard import ResponseWatermark
from modelcourt.guard.watermark import canonical_input

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)


def test_selection_follows_the_contract_byte_for_byte() -> None:
    # given an input, the contract's recipe computed independently here
    x = np.array([[0.5, -1.25], [3.0, 0.1]], dtype=np.float64)
    canonical = b"shape:2,2;" + x.astype("<f4").tobytes()
    digest = hmac.new(KEY, b"mc-guard-v1|" + canonical, hashlib.sha256).digest()
    watermark = ResponseWatermark(KEY, num_classes=10, rate=0.5)

    selected, mac = watermark.selects(x)

    assert canonical_input(x) == canonical
    assert mac == digest
    assert selected == (int.from_bytes(digest[:8], "big") < 0.5 * 2**64)
    expected_wrong = (3 + 1 + int.from_bytes(digest[8:16], "big") % 9) % 10
    assert watermark.wrong_label(3, mac) == expected_wrong


def test_the_same_input_always_gets_the_same_answer() -> None:
    watermark = ResponseWatermark(KEY, num_classes=10, rate=0.5)
    xs = _inputs(200)
    first = [watermark.serve(x, 4) for x in xs]
    again = [watermark.serve(x.astype(np.float64), 4) for x in xs]  # float32 rounding makes these the same input
    assert [(label, marked) for label, _, marked in first] == [(label, marked) for label, _, marked in again]
    assert {marked for _, _, marked in first} == {True, False}


def test_the_selected_fraction_is_within_binomial_range_of_the_rate() -> None:
    # given 100k distinct random inputs and the default rate
    rate, n = 0.005, 100_000
    watermark = ResponseWatermark(KEY, num_classes=10, rate=rate)
    xs = np.random.default_rng(1).random((n, 4)).astype(np.float32)
    _, _, mask = watermark.serve_batch(xs, np.zeros(n, dtype=np.int64), None)
    low, high = stats.binom.ppf([1e-4, 1 - 1e-4], n, rate)
    assert low <= mask.sum() <= high


def test_the_wrong_label_is_never_the_true_one_and_roughly_uniform_over_the_others() -> None:
    classes, n = 10, 40_000
    watermark = ResponseWatermark(KEY, num_classes=classes, rate=1.0)
    xs = np.random.default_rng(2).random((n, 3)).astype(np.float32)
    true = np.random.default_rng(3).integers(0, classes, n)
    served, _, mask = watermark.serve_batch(xs, true, None)
    assert mask.all()
    assert not np.any(served == true)
    shift = (served - true) % classes  # 1..C-1, uniform when the wrong label is
    counts = np.bincount(shift, minlength=classes)[1:]
    assert stats.chisquare(counts).pvalue > 1e-4


def test_scores_are_permuted_so_the_served_label_is_the_argmax() -> None:
    classes = 7
    watermark = ResponseWatermark(KEY, num_classes=classes, rate=1.0)
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(300, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    xs = _inputs(300, seed=5)
    served, out, mask = watermark.serve_batch(xs, probabilities.argmax(axis=1), probabilities)
    assert out is not None
    assert mask.all()
    assert np.array_equal(out.argmax(axis=1), served)
    assert np.allclose(out.sum(axis=1), 1.0)
    assert np.array_equal(np.sort(out, axis=1), np.sort(probabilities, axis=1))  # a permutation: no value changed
    changed = (out != probabilities).sum(axis=1)
    assert set(changed.tolist()) == {2}  # exactly the true and the served label swapped


def test_unselected_answers_are_untouched() -> None:
    watermark = ResponseWatermark(KEY, num_classes=5, rate=0.0)
    scores = np.random.default_rng(6).normal(size=(50, 5))
    served, out, mask = watermark.serve_batch(_inputs(50), scores.argmax(axis=1), scores)
    assert not mask.any()
    assert np.array_equal(served, scores.argmax(axis=1))
    assert out is not None
    assert np.array_equal(out, scores)


def test_serve_batch_agrees_with_serve_row_by_row() -> None:
    watermark = ResponseWatermark(KEY, num_classes=6, rate=0.3)
    scores = np.random.default_rng(7).normal(size=(400, 6))
    xs = _inputs(400, seed=8)
    served, out, mask = watermark.serve_batch(xs, scores.argmax(axis=1), scores)
    assert out is not None
    for i in range(400):
        label, row, marked = watermark.serve(xs[i], int(scores[i].argmax()), scores[i])
        assert (label, marked) == (served[i], mask[i])
        assert row is not None
        assert np.array_equal(row, out[i])
    labels_only, none, mask_only = watermark.serve_batch(xs, scores.argmax(axis=1), None)
    assert none is None
    assert np.array_equal(labels_only, served)
    assert np.array_equal(mask_only, mask)


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((300,), np.float64),
        ((300, 1, 4, 2), np.float32),
        ((300, 3), np.int64),
        ((300, 3), np.uint8),
        ((4, 0), np.float32),
    ],
)
def test_serve_batch_selects_what_selects_selects_for_any_row_shape(shape: tuple[int, ...], dtype: type) -> None:
    # given a batch of rows of one shape and dtype (scalars, images, integers, empty rows)
    watermark = ResponseWatermark(KEY, num_classes=10, rate=0.3)
    xs = (np.random.default_rng(11).normal(size=shape) * 20).astype(dtype)

    # when the batch is served at once
    _, _, mask = watermark.serve_batch(xs, np.zeros(shape[0], dtype=np.int64), None)

    # then each row is selected exactly when the single-input contract selects it
    assert mask.tolist() == [watermark.selects(x)[0] for x in xs]


def test_an_empty_batch_is_served_empty() -> None:
    watermark = ResponseWatermark(KEY, num_classes=3, rate=1.0)
    served, out, mask = watermark.serve_batch(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros((0, 3)))
    assert served.shape == mask.shape == (0,)
    assert out is not None
    assert out.shape == (0, 3)


def test_another_key_selects_other_inputs() -> None:
    xs = _inputs(20_000, seed=9)
    labels = np.zeros(len(xs), dtype=np.int64)
    _, _, mine = ResponseWatermark(KEY, 10, rate=0.05).serve_batch(xs, labels, None)
    _, _, theirs = ResponseWatermark(OTHER_KEY, 10, rate=0.05).serve_batch(xs, labels, None)
    overlap = (mine & theirs).sum()
    assert mine.sum() > 800
    assert theirs.sum() > 800
    assert overlap < 0.2 * mine.sum()  # independent selections overlap at about rate * count = 5%


def test_the_shape_is_part_of_the_input() -> None:
    watermark = ResponseWatermark(KEY, num_classes=10, rate=0.5)
    x = _inputs(1)[0]
    assert watermark.selects(x)[1] != watermark.selects(x.reshape(2, 4))[1]


def test_client_tags_are_keyed_32_hex_pseudonyms() -> None:
    watermark = ResponseWatermark(KEY, num_classes=10)
    tag = watermark.client_tag("203.0.113.7")
    expected = hmac.new(KEY, b"mc-guard-client|203.0.113.7", hashlib.sha256).hexdigest()[:32]
    assert tag == expected
    assert len(tag) == 32
    assert tag == tag.lower()
    assert int(tag, 16) >= 0
    assert watermark.client_tag("203.0.113.8") != tag
    assert ResponseWatermark(OTHER_KEY, num_classes=10).client_tag("203.0.113.7") != tag
    assert "203.0.113.7" not in tag


@pytest.mark.parametrize("key", [b"", b"x" * 31, "a" * 64])
def test_a_short_or_textual_key_is_refused(key: object) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        ResponseWatermark(key, num_classes=10)  # type: ignore[arg-type]


def test_labels_out_of_range_are_refused() -> None:
    watermark = ResponseWatermark(KEY, num_classes=3, rate=0.5)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        watermark.serve(_inputs(1)[0], 3)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        watermark.serve_batch(_inputs(2), np.array([0, 5]), None)


def test_the_key_stays_out_of_repr() -> None:
    assert KEY.hex() not in repr(ResponseWatermark(KEY, num_classes=3))
    assert repr(KEY) not in repr(ResponseWatermark(KEY, num_classes=3))
