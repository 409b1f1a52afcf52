"""Adaptive false claimants: what someone who does NOT own a suspect can make to look as if they did.

Each generator builds the evidence one kind of attacker would file; the validity benchmark files it
and checks that the decision rules never confirm it.

- :func:`craft_on_suspect`: white-box access to the suspect (an uploaded file, a registered model).
  Targeted examples the suspect labels one way and the attacker's own models do not, so that they do
  not transfer to independent models and the false-claim screen lets them pass.
- :func:`label_only_claim`: query access only (an endpoint). Natural inputs on which the suspect
  disagrees with the attacker's own models, claimed with the suspect's own answers.
- :func:`best_of_watermarks`: many verifiable watermarks drawn from distinct seeds, each put to the
  suspect; the one it happens to match best is filed (a multiplicity attack on generated evidence).
- :func:`margin_split`: a dataset-inference claim whose "members" are the samples on which the
  claimant's model has the largest margin and whose "non-members" those with the smallest.
- :func:`carry_claim`: the attacker's own model fine-tuned to answer a crafted set, so that a binding
  check on the claimant's model passes.
- :func:`fine_tuned_family`: models fine-tuned from one parent, a family whose members agree with
  each other more than independent models do.

Pure PyTorch/NumPy: no Django, no workers. Everything is seeded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from modelcourt.embed import embed_watermark
from ownership.watermarks import generate_watermark
from verification.methods.fingerprints import generate_fingerprints
from verification.methods.suspects import Suspect
from verification.methods.thefts import ClaimSet, fine_tune
from verification.methods.training import predict_labels

__all__ = [
    "WatermarkDraw",
    "best_of_watermarks",
    "carry_claim",
    "craft_on_suspect",
    "fine_tuned_family",
    "label_only_claim",
    "margin_split",
]

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]


def craft_on_suspect(
    suspect: nn.Module,
    natural_x: npt.ArrayLike,
    *,
    own_models: Sequence[nn.Module],
    count: int,
    tries: Sequence[tuple[float, float]] = ((0.25, 0.2), (0.25, 0.5), (0.5, 0.5), (1.0, 0.5)),
    low: float = 0.0,
    high: float = 1.0,
    seed: int = 0,
) -> ClaimSet:
    """``count`` targeted examples crafted on the suspect's weights, pushed away from ``own_models``.

    The labels are the suspect's answers, so the suspect matches every one; the attacker's own models
    (stand-ins for any reference panel) rarely give them, so the examples do not transfer. ``tries`` are
    (L-infinity budget, largest share of own models that may agree) in the order the attacker relaxes
    them until ``count`` examples survive (those its models agree with least come first); ``ValueError``
    when none does.
    """
    if not tries:
        raise ValueError("the attacker needs at least one (budget, agreement) to try")
    for eps, agreement in tries:
        try:
            made = generate_fingerprints(
                suspect,
                natural_x,
                references=own_models,
                count=count,
                eps=eps,
                max_reference_agreement=agreement,
                low=low,
                high=high,
                seed=seed,
            )
        except ValueError:
            continue  # too few candidates survived: relax and try again
        return ClaimSet(inputs=made.inputs, labels=made.labels)
    raise ValueError(f"fewer than {count} examples crafted on the suspect survived every try in {list(tries)}")


def label_only_claim(
    suspect: Suspect,
    natural_x: npt.ArrayLike,
    *,
    own_models: Sequence[nn.Module],
    count: int,
    min_count: int = 1,
    max_own_agreement: int = 0,
) -> ClaimSet:
    """Up to ``count`` natural inputs the suspect labels unlike the attacker's models, with the suspect's labels.

    One label query per natural input. Inputs on which at most ``max_own_agreement`` of ``own_models``
    give the suspect's answer qualify; the fewest agreeing come first. Raises ``ValueError`` when fewer
    than ``min_count`` qualify.
    """
    if not own_models:
        raise ValueError("the attacker needs at least one model of its own to find where the suspect differs")
    if count < 1 or min_count < 1 or min_count > count:
        raise ValueError(f"need 1 <= min_count <= count, got {min_count} and {count}")
    x = np.ascontiguousarray(np.asarray(natural_x, dtype=np.float32))
    answers = np.asarray(suspect.labels(x), dtype=np.int64)
    own = np.stack([predict_labels(model, x) for model in own_models])
    agreeing = (own == answers[None, :]).sum(axis=0)
    qualified = np.flatnonzero(agreeing <= max_own_agreement)
    if len(qualified) < min_count:
        raise ValueError(
            f"only {len(qualified)} natural inputs have the suspect differ from the attacker's models "
            f"(need {min_count})"
        )
    picked = qualified[np.argsort(agreeing[qualified], kind="stable")][:count]
    return ClaimSet(inputs=x[picked], labels=answers[picked])


@dataclass(frozen=True)
class WatermarkDraw:
    """The watermark an attacker files after trying ``draws`` of them on one suspect: the best match."""

    index: int
    seed: bytes
    inputs: FloatArray
    labels: LabelArray
    matches: int
    draws: int
    match_counts: npt.NDArray[np.int64]


def best_of_watermarks(
    suspects: Sequence[Suspect],
    *,
    seeds: Sequence[bytes],
    count: int,
    input_shape: Sequence[int],
    num_classes: int,
    low: float = 0.0,
    high: float = 1.0,
    chunk: int = 4096,
) -> list[WatermarkDraw]:
    """For each suspect, the watermark of ``seeds`` (generated as the service would) it matches most.

    Every suspect answers every watermark (``len(seeds) * count`` queries each); ties go to the earliest
    seed. ``match_counts[m]`` is how many of the draws the suspect matched exactly ``m`` times.
    """
    if not suspects or not seeds:
        raise ValueError("the attack needs at least one suspect and one seed")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    best = [(-1, -1) for _ in suspects]  # (matches, index) per suspect
    histograms = [np.zeros(count + 1, dtype=np.int64) for _ in suspects]
    for start in range(0, len(seeds), chunk):
        marks = [
            generate_watermark(
                seed=s, count=count, input_shape=input_shape, num_classes=num_classes, low=low, high=high
            )
            for s in seeds[start : start + chunk]
        ]
        inputs = np.concatenate([m["inputs"] for m in marks])
        labels = np.stack([m["labels"] for m in marks])
        for k, suspect in enumerate(suspects):
            answers = np.asarray(suspect.labels(inputs), dtype=np.int64).reshape(len(marks), count)
            matches = (answers == labels).sum(axis=1)
            histograms[k] += np.bincount(matches, minlength=count + 1)
            top = int(matches.argmax())
            if int(matches[top]) > best[k][0]:
                best[k] = (int(matches[top]), start + top)
    draws = []
    for (matches, index), histogram in zip(best, histograms, strict=True):
        mark = generate_watermark(
            seed=seeds[index], count=count, input_shape=input_shape, num_classes=num_classes, low=low, high=high
        )
        draws.append(WatermarkDraw(index, seeds[index], mark["inputs"], mark["labels"], matches, len(seeds), histogram))
    return draws


def margin_split(model: nn.Module, x: npt.ArrayLike, *, members: int, nonmembers: int) -> tuple[FloatArray, FloatArray]:
    """The ``members`` samples with the largest margin on ``model`` and the ``nonmembers`` with the smallest.

    The margin is the top logit minus the runner-up. A split chosen so says nothing about which samples
    the model was trained on: large-margin samples are far from every model's boundaries.
    """
    array = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if members < 1 or nonmembers < 1 or members + nonmembers > len(array):
        raise ValueError(f"need 1 <= members, nonmembers and members + nonmembers <= {len(array)}")
    model.eval()
    with torch.inference_mode():
        top2 = model(torch.from_numpy(array)).topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).numpy()
    order = np.argsort(-margin, kind="stable")
    return array[order[:members]], array[order[len(order) - nonmembers :]]


def carry_claim(
    model: nn.Module,
    claim: ClaimSet,
    *,
    train_x: npt.ArrayLike,
    train_y: npt.ArrayLike,
    epochs: int = 20,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` fine-tuned on its clean data with ``claim`` mixed in, so that it answers the claim."""
    carrier = copy.deepcopy(model).cpu()
    embed_watermark(
        carrier,
        train_inputs=np.asarray(train_x, dtype=np.float32),
        train_labels=np.asarray(train_y, dtype=np.int64),
        trigger_inputs=claim["inputs"],
        trigger_labels=claim["labels"],
        epochs=epochs,
        seed=seed,
    )
    return carrier.eval()


def fine_tuned_family(
    parent: nn.Module,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    size: int,
    subset_fraction: float = 0.6,
    epochs: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[nn.Module]:
    """``size`` children of ``parent``, each fine-tuned on its own seeded subset of ``(x, y)``."""
    if size < 1 or not 0.0 < subset_fraction <= 1.0:
        raise ValueError(f"need size >= 1 and subset_fraction in (0, 1], got {size} and {subset_fraction}")
    inputs = np.asarray(x, dtype=np.float32)
    labels = np.asarray(y, dtype=np.int64)
    n = max(1, round(len(inputs) * subset_fraction))
    children = []
    for i in range(size):
        child_seed = int(np.random.default_rng([seed, i, 0xFA31]).integers(2**31))
        picked = np.random.default_rng(child_seed).choice(len(inputs), size=n, replace=False)
        children.append(fine_tune(parent, inputs[picked], labels[picked], epochs=epochs, lr=lr, seed=child_seed))
    return children
