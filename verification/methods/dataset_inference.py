"""Dataset inference (Maini, Yaghini & Papernot, ICLR 2021): does the suspect carry the claimant's private data?

A model sits further from its decision boundaries around the samples it was trained on than around
samples it never saw. Every sample is described by its distances to the class boundaries:

- **MinGD** (white-box, :func:`mingd_distances`): for every target class ``t`` and every norm, gradient
  steps on the input raise the margin ``z_t - max_j z_j`` until the model predicts ``t``. L-infinity
  steps follow the sign of the gradient, L2 steps the normalised gradient, L1 steps move the few
  coordinates with the largest ``|gradient|`` that can still move inside ``[low, high]``. The distance
  is the norm (of the step's kind) of the perturbation at the first point predicted ``t``; it is 0 for
  the class the model already predicts.
- **Blind Walk** (label-only, :func:`blind_walk`): walk ``x + s * step * d`` along random directions
  ``d`` and stop at the first label change. Directions cycle through uniform, Gaussian and Laplace
  noise (the three kinds of the paper), each scaled to unit L2 norm so that one step size serves all
  of them; the distance is the L2 norm of the (clipped) perturbation.

Both clip every point to ``[low, high]`` and give an unreached target the **cap**, the furthest the
walk could have gone: ``steps * step size`` in the walk's norm. Clipping to the box only shortens a
perturbation, so every reached distance is at most the cap and the cap orders unreached targets
after all reached ones. Step sizes are fractions of the input range ``high - low``.

The claimant's model gives distances for half of the private (training) and half of the public
(never trained on) samples; within each norm (MinGD) or direction kind (Blind Walk) they are sorted,
so that features do not depend on class order or direction order, then ``log1p``-compressed and
standardised (clipped to ``FEATURE_BOUND`` claimant standard deviations). A seeded scorer learns
private = 1, public = 0: by default an MLP with one hidden layer of 32 and weight decay (the paper
also uses a small MLP; on the synthetic task it separates far better than logistic regression, which
remains an option). Scores are its log-odds clipped to ``[-SCORE_BOUND, SCORE_BOUND]``. The other half
(the test half) is measured on the suspect and scored. The split is drawn from ``split_seed`` before
anything is measured and recorded with a digest of the test indices; Blind Walk directions and the
permutations are drawn from the same seed.

**The p-value** is the larger of two (an intersection-union test: ownership needs both to reject):

- *within the suspect*: a one-sided permutation test of mean(private scores) > mean(public scores) on
  the test half (every relabelling when there are at most ``permutations + 1``, else ``permutations``
  seeded draws and ``(#{drawn >= observed} + 1) / (permutations + 1)``). When its smallest attainable
  p-value is above alpha the test is inconclusive. Welch's t is reported (``t_statistic``,
  ``welch_p_value``) but no longer decides: with small, unequal, skewed groups it over-rejects.
- *against the reference panel*: the same test (same claimant features and scorer, same split, same
  method, same walk directions) on the first ``panel_members`` models of the panel, in manifest order.
  They never saw the claimant's data, so their Welch t-statistics show what this evidence gives on a
  model that is independent of it. With k of them (mean m, sample standard deviation s), the suspect's
  t_s gets ``P[T_nu >= (t_s - m) / (s * sqrt(1 + 1/k))]`` with nu = min(k - 1, 4), heavier-tailed than
  the normal-theory k - 1, and never below the rank p-value ``(1 + #{panel t >= t_s}) / (k + 1)`` unless
  t_s beats every panel model (:func:`panel_p_value`; ``p_value_panel``). The rank p-value is reported
  beside it (``p_value_panel_rank``), and every panel statistic is recorded (``panel_t_statistics``).

**Guarantee.** For an independent suspect, P[p <= alpha] <= alpha if either (a) the suspect's
statistic and the k panel models' statistics, given the claimant's evidence, are independent draws
from one normal distribution (the suspect is exchangeable with the panel: it could have been one more
panel member), whatever member / non-member split the claimant chose (with k - 1 > 4 the test keeps
a margin beyond this: see :func:`panel_p_value`), or (b) the claimant's members
and non-members were assigned at random from one pool and the scorer carries no trace of which test
samples went where (then the suspect's test-half scores are exchangeable between the groups), whatever
the panel. Normality in (a) is an assumption about t-statistics of independent models; the rank
p-value needs only exchangeability but cannot go below 1 / (k + 1), so it is reported, not used. The
split, seed and evidence are fixed by the claimant's commitment before the suspect is known; a split
chosen with the suspect itself in hand is outside both conditions (the precedence rule excludes it).
Without a panel (``panel=None``) only the permutation p-value is given and only (b) protects it; the
statistics say ``calibration: none``.

Blind Walk on a label-only suspect sends at most :func:`blind_walk_query_budget` queries; a suspect
with less budget left is not queried and the test is inconclusive, with the number it needs.

Pure PyTorch/NumPy: nothing here imports Django, Celery or the apps. Models run on their own device.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from verification.methods.budgets import WALK_DIRECTIONS, WALK_MAX_STEPS
from verification.methods.decision import DEFAULT_ALPHA, StatValue, TestResult
from verification.methods.panels import ReferencePanel
from verification.methods.statistics import (
    WelchResult,
    empirical_p_value,
    permutation_one_sided,
    prediction_p_value,
    welch_one_sided,
)
from verification.methods.suspects import Suspect

__all__ = [
    "DIRECTION_KINDS",
    "NORMS",
    "PANEL_MEMBERS",
    "PERMUTATIONS",
    "SCORE_BOUND",
    "BlindWalkResult",
    "Method",
    "Norm",
    "Scorer",
    "ScorerKind",
    "blind_walk",
    "blind_walk_distances",
    "blind_walk_query_budget",
    "boundary_features",
    "claimant_side_features",
    "dataset_inference_test",
    "fit_scorer",
    "mingd_distances",
    "mingd_distances_naive",
    "panel_p_value",
]

Norm = Literal["linf", "l2", "l1"]
Method = Literal["mingd", "blind_walk"]
ScorerKind = Literal["logistic", "mlp"]
NORMS: tuple[Norm, ...] = get_args(Norm)
DIRECTION_KINDS = ("uniform", "gaussian", "laplace")

InputBatch = npt.NDArray[Any] | torch.Tensor
FloatArray = npt.NDArray[np.float64]
LabelFn = Callable[[torch.Tensor], npt.NDArray[np.int64]]

MINGD_STEPS = 100
MINGD_STEP_LINF = 0.005
MINGD_STEP_L2 = 0.02
MINGD_STEP_L1 = 0.1
MINGD_L1_COORDINATES = 4
WALK_STEP = 0.05
SCORE_BOUND = 10.0  # scores are log-odds clipped to [-10, 10]: no run reports a mean of 1847
FEATURE_BOUND = 10.0  # standardised features are clipped to 10 claimant standard deviations
PERMUTATIONS = 19_999  # within-suspect permutations: p can reach 1 / 20,000 = 5e-5, below alpha = 1e-3
MAX_PERMUTATIONS = 999_999
PANEL_TAIL_DF = 4  # the panel null's degrees of freedom at most: heavier tails than k - 1 (see panel_p_value)
PANEL_MEMBERS = 20  # the first 20 panel members (manifest order) calibrate the test: every built-in member
CHUNK_ELEMENTS = 1 << 22  # input values walked at once: 16 MiB of float32 per tensor of the walk
_LABEL_BATCH = 4096


# ---------------------------------------------------------------------------------------------- inputs


def _as_batch(x: InputBatch, name: str, *, low: float, high: float) -> torch.Tensor:
    """A finite float32 CPU tensor [N, ...] with N >= 1 and values in [low, high], or a readable ValueError."""
    if isinstance(x, torch.Tensor):
        tensor = x.detach().to("cpu")
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise ValueError(f"{name} must be real numbers, got a {tensor.dtype} tensor")
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiu":
            raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    else:
        raise ValueError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")
    tensor = tensor.to(torch.float32).contiguous()
    if tensor.dim() < 2:
        raise ValueError(f"{name} must be a batch [N, features...], got shape {list(tensor.shape)}")
    if tensor.shape[0] == 0 or tensor[0].numel() == 0:
        raise ValueError(f"{name} is empty (shape {list(tensor.shape)})")
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    if float(tensor.min()) < low or float(tensor.max()) > high:
        raise ValueError(
            f"{name} has values in [{float(tensor.min()):g}, {float(tensor.max()):g}], outside the input range "
            f"[{low:g}, {high:g}]"
        )
    return tensor


def _check_range(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"the input range needs finite low < high, got [{low!r}, {high!r}]")


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")


def _check_count(minimum: int, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's parameters live and their float type (CPU float32 for a parameterless model)."""
    for parameter in model.parameters():
        dtype = parameter.dtype if parameter.is_floating_point() else torch.float32
        return parameter.device, dtype
    return torch.device("cpu"), torch.float32


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the block (dropout off, batch norm frozen: rows stay independent), then the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _check_norms(norms: Sequence[Norm]) -> tuple[Norm, ...]:
    chosen = tuple(norms)
    if not chosen or any(n not in NORMS for n in chosen) or len(set(chosen)) != len(chosen):
        raise ValueError(f"norms must be distinct names from {NORMS}, got {chosen!r}")
    return chosen


# ---------------------------------------------------------------------------------------------- MinGD


@dataclass(frozen=True)
class _MinGDPlan:
    """The walk every MinGD row follows: norms, step per norm (absolute units), cap per norm, box."""

    norms: tuple[Norm, ...]
    steps: int
    step_sizes: tuple[float, ...]
    l1_coordinates: int
    low: float
    high: float
    num_classes: int

    @property
    def caps(self) -> tuple[float, ...]:
        return tuple(self.steps * size for size in self.step_sizes)


def _plan(
    *,
    num_classes: int,
    norms: Sequence[Norm],
    steps: int,
    step_linf: float,
    step_l2: float,
    step_l1: float,
    l1_coordinates: int,
    low: float,
    high: float,
) -> _MinGDPlan:
    _check_count(2, num_classes=num_classes)
    _check_count(1, steps=steps, l1_coordinates=l1_coordinates)
    _check_positive(step_linf=step_linf, step_l2=step_l2, step_l1=step_l1)
    _check_range(low, high)
    chosen = _check_norms(norms)
    relative = {"linf": step_linf, "l2": step_l2, "l1": step_l1}
    sizes = tuple(relative[n] * (high - low) for n in chosen)
    return _MinGDPlan(chosen, steps, sizes, l1_coordinates, float(low), float(high), num_classes)


def _flat_norm(flat: torch.Tensor, norm: Norm) -> torch.Tensor:
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.square().sum(dim=1).sqrt()
    return flat.abs().sum(dim=1)


def _row_norms(delta: torch.Tensor, norm_ids: torch.Tensor, norms: tuple[Norm, ...]) -> torch.Tensor:
    """Per row, the norm its walk is measured in."""
    flat = delta.reshape(delta.shape[0], -1)
    every = torch.stack([_flat_norm(flat, n) for n in norms], dim=1)
    return every.gather(1, norm_ids[:, None]).squeeze(1)


def _ascent_directions(
    grad: torch.Tensor, point: torch.Tensor, norm_ids: torch.Tensor, plan: _MinGDPlan
) -> torch.Tensor:
    """Per row a step direction of unit size in the row's norm (zero where the gradient vanishes)."""
    g = grad.reshape(grad.shape[0], -1)
    out = torch.zeros_like(g)
    # every norm's direction for every row, then a select: masks would cost a host sync per norm and step
    for k, norm in enumerate(plan.norms):
        if norm == "linf":
            direction = g.sign()
        elif norm == "l2":
            direction = g / g.square().sum(dim=1, keepdim=True).sqrt().clamp_min(1e-12)
        else:
            p = point.reshape(point.shape[0], -1)
            # a coordinate pinned at the box edge and pushed outwards would spend the step on nothing
            stuck = ((g > 0) & (p >= plan.high)) | ((g < 0) & (p <= plan.low))
            strength = g.abs().masked_fill(stuck, 0.0)
            k_top = min(plan.l1_coordinates, g.shape[1])
            top = strength.topk(k_top, dim=1).indices
            chosen = g.sign().gather(1, top) * (strength.gather(1, top) > 0)
            direction = torch.zeros_like(g).scatter_(1, top, chosen) / k_top
        out = torch.where((norm_ids == k)[:, None], direction, out)
    return out.reshape(grad.shape)


def _mingd_rows(
    model: nn.Module, x0: torch.Tensor, targets: torch.Tensor, norm_ids: torch.Tensor, plan: _MinGDPlan
) -> torch.Tensor:
    """Distances for a batch of (sample, norm, target) rows, all walked together; finished rows drop out."""
    device = x0.device
    step_sizes = torch.tensor(plan.step_sizes, dtype=x0.dtype, device=device)
    caps = torch.tensor(plan.caps, dtype=x0.dtype, device=device)
    distances = caps[norm_ids].clone()
    index = torch.arange(x0.shape[0], device=device)
    delta = torch.zeros_like(x0)
    view = (-1,) + (1,) * (x0.dim() - 1)
    for step in range(plan.steps + 1):
        delta.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x0 + delta)
            if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (x0.shape[0], plan.num_classes):
                shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(
                    f"the model answered {shape} for a batch of {x0.shape[0]}, expected logits "
                    f"[{x0.shape[0]}, num_classes={plan.num_classes}]"
                )
            margin = logits.gather(1, targets[:, None]).squeeze(1) - logits.amax(dim=1)
        reached = logits.detach().argmax(dim=1) == targets
        # rows still in the batch hold the cap until reached, so a select records the reached ones
        now = _row_norms(delta.detach(), norm_ids, plan.norms)
        distances[index] = torch.where(reached, now, distances[index])
        keep = (~reached).nonzero().squeeze(1)  # the one host sync of the step
        if step == plan.steps or keep.shape[0] == 0:
            break
        (grad,) = torch.autograd.grad(margin.sum(), delta)
        with torch.no_grad():
            moved = delta.detach() + step_sizes[norm_ids].reshape(view) * _ascent_directions(
                grad, x0 + delta.detach(), norm_ids, plan
            )
            delta = (x0 + moved).clamp(plan.low, plan.high) - x0
        if keep.shape[0] < x0.shape[0]:
            x0, delta, targets, norm_ids, index = (
                t.index_select(0, keep) for t in (x0, delta, targets, norm_ids, index)
            )
    return distances


def _run_mingd(
    model: nn.Module,
    x: InputBatch,
    plan: _MinGDPlan,
    runner: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
) -> FloatArray:
    batch = _as_batch(x, "x", low=plan.low, high=plan.high)
    device, dtype = _device_and_dtype(model)
    with _evaluating(model):
        distances = runner(batch.to(device=device, dtype=dtype), *_row_layout(batch.shape[0], plan, device))
    per_sample = len(plan.norms) * plan.num_classes
    return distances.detach().to("cpu", torch.float64).numpy().reshape(batch.shape[0], per_sample)


def _row_layout(n: int, plan: _MinGDPlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample, norm and target of every row, ordered (sample, norm, target) like the output columns."""
    k, c = len(plan.norms), plan.num_classes
    rows = torch.arange(n * k * c, device=device)
    return rows // (k * c), (rows // c) % k, rows % c


def mingd_distances(
    model: nn.Module,
    x: InputBatch,
    *,
    num_classes: int,
    norms: Sequence[Norm] = NORMS,
    steps: int = MINGD_STEPS,
    step_linf: float = MINGD_STEP_LINF,
    step_l2: float = MINGD_STEP_L2,
    step_l1: float = MINGD_STEP_L1,
    l1_coordinates: int = MINGD_L1_COORDINATES,
    low: float = 0.0,
    high: float = 1.0,
    chunk_rows: int | None = None,
) -> FloatArray:
    """MinGD distances [N, len(norms) * num_classes], column ``k * num_classes + t`` = norm k to class t.

    All (sample, norm, target) rows of a chunk walk together (by default about four million input
    values a chunk: 65,536 rows of 64 features). Step sizes are fractions of ``high - low``; an
    unreached target gets the cap ``steps * step size``. The model must treat batch rows
    independently (eval mode, set here for the call and restored after).
    """
    plan = _plan(
        num_classes=num_classes,
        norms=norms,
        steps=steps,
        step_linf=step_linf,
        step_l2=step_l2,
        step_l1=step_l1,
        l1_coordinates=l1_coordinates,
        low=low,
        high=high,
    )
    if chunk_rows is not None:
        _check_count(1, chunk_rows=chunk_rows)

    def chunked(x0: torch.Tensor, sample: torch.Tensor, norm_ids: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rows = chunk_rows or max(1, CHUNK_ELEMENTS // x0[0].numel())
        parts = [
            _mingd_rows(model, x0[sample[i : i + rows]], target[i : i + rows], norm_ids[i : i + rows], plan)
            for i in range(0, sample.shape[0], rows)
        ]
        return torch.cat(parts)

    return _run_mingd(model, x, plan, chunked)


def mingd_distances_naive(
    model: nn.Module,
    x: InputBatch,
    *,
    num_classes: int,
    norms: Sequence[Norm] = NORMS,
    steps: int = MINGD_STEPS,
    step_linf: float = MINGD_STEP_LINF,
    step_l2: float = MINGD_STEP_L2,
    step_l1: float = MINGD_STEP_L1,
    l1_coordinates: int = MINGD_L1_COORDINATES,
    low: float = 0.0,
    high: float = 1.0,
) -> FloatArray:
    """:func:`mingd_distances` one (sample, norm, target) row at a time: the baseline it is checked against."""
    plan = _plan(
        num_classes=num_classes,
        norms=norms,
        steps=steps,
        step_linf=step_linf,
        step_l2=step_l2,
        step_l1=step_l1,
        l1_coordinates=l1_coordinates,
        low=low,
        high=high,
    )

    def one_by_one(
        x0: torch.Tensor, sample: torch.Tensor, norm_ids: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        out = torch.empty(sample.shape[0], dtype=x0.dtype, device=x0.device)
        for i in range(x0.shape[0]):
            for k in range(len(plan.norms)):
                for t in range(plan.num_classes):
                    row = (i * len(plan.norms) + k) * plan.num_classes + t
                    one = slice(row, row + 1)
                    out[row] = _mingd_rows(model, x0[i : i + 1], target[one], norm_ids[one], plan)[0]
        return out

    return _run_mingd(model, x, plan, one_by_one)


# ---------------------------------------------------------------------------------------------- Blind Walk


@dataclass(frozen=True)
class BlindWalkResult:
    """Blind Walk distances [N, directions], steps walked per direction and label queries spent."""

    distances: FloatArray
    steps: npt.NDArray[np.int64]
    queries: int
    cap: float


def _walk_directions(n: int, directions: int, features: int, seed: int) -> torch.Tensor:
    """Unit-L2 directions [n, directions, features]; direction j is uniform, Gaussian or Laplace noise by j % 3."""
    rng = np.random.default_rng([seed, 0xB11D])
    out = np.empty((n, directions, features), dtype=np.float64)
    kinds = np.arange(directions) % len(DIRECTION_KINDS)
    for kind, label in enumerate(DIRECTION_KINDS):
        size = (n, int((kinds == kind).sum()), features)
        if label == "uniform":
            out[:, kinds == kind] = rng.uniform(-1.0, 1.0, size=size)
        elif label == "gaussian":
            out[:, kinds == kind] = rng.standard_normal(size=size)
        else:
            out[:, kinds == kind] = rng.laplace(0.0, 1.0, size=size)
    out /= np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)
    return torch.from_numpy(out.astype(np.float32))


def _blind_walk(
    labels: LabelFn,
    batch: torch.Tensor,
    *,
    directions: int,
    step: float,
    max_steps: int,
    seed: int,
    low: float,
    high: float,
) -> BlindWalkResult:
    n, shape = batch.shape[0], tuple(batch.shape[1:])
    flat = batch.reshape(n, -1)
    units = _walk_directions(n, directions, flat.shape[1], seed).reshape(n * directions, -1)
    size = step * (high - low)
    cap = max_steps * size
    sample = torch.arange(n).repeat_interleave(directions)
    distances = torch.full((n * directions,), cap, dtype=torch.float64)
    walked = np.full(n * directions, max_steps, dtype=np.int64)
    base = torch.from_numpy(labels(batch))
    queries = n
    active = torch.arange(n * directions)
    for s in range(1, max_steps + 1):
        origin = flat[sample[active]]
        points = (origin + (s * size) * units[active]).clamp(low, high)
        answered = torch.from_numpy(labels(points.reshape(-1, *shape)))
        queries += int(active.shape[0])
        flipped = answered != base[sample[active]]
        if bool(flipped.any()):
            done = active[flipped]
            distances[done] = (points[flipped] - origin[flipped]).norm(dim=1).to(torch.float64)
            walked[done.numpy()] = s
            active = active[~flipped]
        if active.shape[0] == 0:
            break
    return BlindWalkResult(distances.numpy().reshape(n, directions), walked.reshape(n, directions), queries, cap)


def _check_walk(directions: int, step: float, max_steps: int, low: float, high: float) -> None:
    _check_count(1, directions=directions, max_steps=max_steps)
    _check_positive(step=step)
    _check_range(low, high)


def blind_walk(
    suspect: Suspect,
    x: InputBatch,
    *,
    directions: int = WALK_DIRECTIONS,
    step: float = WALK_STEP,
    max_steps: int = WALK_MAX_STEPS,
    seed: int = 0,
    low: float = 0.0,
    high: float = 1.0,
) -> BlindWalkResult:
    """Blind Walk through ``suspect.labels`` only: every query is counted and the budget applies.

    One ``labels`` call for the starting labels, then one per step for the walks still going. ``step``
    is a fraction of ``high - low``; a walk that never flips gets the cap ``max_steps * step``. A
    budget that runs out raises :class:`QueryBudgetExceeded` before the query is sent.
    """
    _check_walk(directions, step, max_steps, low, high)
    batch = _as_batch(x, "x", low=low, high=high)
    if tuple(batch.shape[1:]) != suspect.input_shape:
        raise ValueError(
            f"x must have shape [N, {', '.join(map(str, suspect.input_shape))}] for {suspect.describe()}, "
            f"got {list(batch.shape)}"
        )
    return _blind_walk(
        suspect.labels, batch, directions=directions, step=step, max_steps=max_steps, seed=seed, low=low, high=high
    )


def blind_walk_distances(
    suspect: Suspect,
    x: InputBatch,
    *,
    directions: int = WALK_DIRECTIONS,
    step: float = WALK_STEP,
    max_steps: int = WALK_MAX_STEPS,
    seed: int = 0,
    low: float = 0.0,
    high: float = 1.0,
) -> FloatArray:
    """Blind Walk distances [N, directions] (see :func:`blind_walk` for the queries spent)."""
    return blind_walk(
        suspect, x, directions=directions, step=step, max_steps=max_steps, seed=seed, low=low, high=high
    ).distances


def _module_labels(model: nn.Module) -> LabelFn:
    """Argmax labels straight from a module (the claimant's own model: nothing to count)."""
    device, dtype = _device_and_dtype(model)

    def labels(points: torch.Tensor) -> npt.NDArray[np.int64]:
        with _evaluating(model), torch.inference_mode():
            parts = [
                model(points[i : i + _LABEL_BATCH].to(device=device, dtype=dtype)).argmax(dim=1).cpu()
                for i in range(0, points.shape[0], _LABEL_BATCH)
            ]
        return torch.cat(parts).numpy().astype(np.int64)

    return labels


# ---------------------------------------------------------------------------------------------- features and scorer


def boundary_features(distances: FloatArray, groups: int) -> FloatArray:
    """Distances [N, groups * width] sorted within each group, then ``log1p``: order-free, tail-compressed."""
    array = np.asarray(distances, dtype=np.float64)
    if array.ndim != 2 or groups < 1 or array.shape[1] % groups:
        raise ValueError(f"distances of shape {list(array.shape)} do not split into {groups} equal groups")
    n, width = array.shape[0], array.shape[1] // groups
    return np.log1p(np.sort(array.reshape(n, groups, width), axis=2).reshape(n, groups * width))


@dataclass(frozen=True)
class Scorer:
    """A fitted scorer: standardisation learned on the claimant's features and a seeded torch model."""

    kind: ScorerKind
    mean: torch.Tensor
    std: torch.Tensor
    model: nn.Module
    train_accuracy: float

    def score(self, features: FloatArray) -> FloatArray:
        """Scores [N], clipped log-odds of 'private' in ``[-SCORE_BOUND, SCORE_BOUND]``: higher looks more trained-on.

        Features far outside what the claimant's model produced (a column constant on the claimant, a
        suspect with other distance scales) cannot run a score off: each standardised feature is clipped
        to ``FEATURE_BOUND`` claimant standard deviations and the log-odds to ``SCORE_BOUND``.
        """
        array = np.asarray(features, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self.mean.shape[0]:
            raise ValueError(f"features must have shape [N, {self.mean.shape[0]}], got {list(array.shape)}")
        if not np.all(np.isfinite(array)):
            raise ValueError("features contain NaN or infinite values")
        inputs = _standardised(torch.from_numpy(array).to(torch.float32), self.mean, self.std)
        with torch.inference_mode():
            out: torch.Tensor = self.model(inputs).reshape(-1).clamp(-SCORE_BOUND, SCORE_BOUND)
        scores: FloatArray = out.to(torch.float64).numpy()
        return scores


def _standardised(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((features - mean) / std).clamp(-FEATURE_BOUND, FEATURE_BOUND)


def fit_scorer(
    private_features: FloatArray,
    public_features: FloatArray,
    *,
    kind: ScorerKind = "mlp",
    seed: int = 0,
    iterations: int = 500,
    weight_decay: float = 1e-2,
) -> Scorer:
    """Fit private = 1 / public = 0 on the claimant's features (full-batch Adam, classes weighted equally)."""
    if kind not in get_args(ScorerKind):
        raise ValueError(f"unknown scorer {kind!r}; expected one of {get_args(ScorerKind)}")
    private = torch.from_numpy(np.asarray(private_features, dtype=np.float32))
    public = torch.from_numpy(np.asarray(public_features, dtype=np.float32))
    if private.dim() != 2 or public.dim() != 2 or private.shape[1] != public.shape[1]:
        raise ValueError(
            f"private and public features must be [N, F] with the same F, got {list(private.shape)} "
            f"and {list(public.shape)}"
        )
    if private.shape[0] == 0 or public.shape[0] == 0:
        raise ValueError("the scorer needs at least one private and one public sample")
    inputs = torch.cat([private, public])
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("features contain NaN or infinite values")
    targets = torch.cat([torch.ones(private.shape[0]), torch.zeros(public.shape[0])])
    # each side weighs half, so an unbalanced split does not tilt the scorer towards the bigger side
    weights = torch.cat(
        [torch.full((private.shape[0],), 0.5 / private.shape[0]), torch.full((public.shape[0],), 0.5 / public.shape[0])]
    )
    mean = inputs.mean(dim=0)
    spread = inputs.std(dim=0, unbiased=False)
    # a column constant on the claimant (own class at 0, walks that all reach the cap) is measured in its own
    # units: dividing by a tiny spread would turn any other model's small difference there into a huge score
    std = torch.where(spread < 1e-6, torch.ones_like(spread), spread)
    standard = _standardised(inputs, mean, std)
    width = inputs.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module = (
            nn.Linear(width, 1)
            if kind == "logistic"
            else nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 1))
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(iterations):
            logits = model(standard).reshape(-1)
            loss = (weights * nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    model.eval()
    with torch.inference_mode():
        predicted = model(standard).reshape(-1) > 0
    accuracy = float((weights * (predicted == targets.bool()).float()).sum())
    return Scorer(kind, mean, std, model, accuracy)


# ---------------------------------------------------------------------------------------------- the test


@dataclass(frozen=True)
class _Split:
    private_train: npt.NDArray[np.int64]
    private_test: npt.NDArray[np.int64]
    public_train: npt.NDArray[np.int64]
    public_test: npt.NDArray[np.int64]

    def digest(self) -> str:
        """Short SHA-256 of the test indices: lets a reader check which samples were tested."""
        blob = self.private_test.astype("<i8").tobytes() + b"|" + self.public_test.astype("<i8").tobytes()
        return hashlib.sha256(blob).hexdigest()[:16]


def _split(n_private: int, n_public: int, *, seed: int, train_fraction: float) -> _Split:
    """Train / test indices for both sides, drawn from ``seed`` alone before anything is measured."""
    if not (0.0 < train_fraction < 1.0):
        raise ValueError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction!r}")
    rng = np.random.default_rng([seed, 0xDA7A])
    parts: list[npt.NDArray[np.int64]] = []
    for n, side in ((n_private, "private"), (n_public, "public")):
        n_train = round(n * train_fraction)
        if n_train < 2 or n - n_train < 2:
            raise ValueError(
                f"{n} {side} samples split {n_train} / {n - n_train} at train_fraction={train_fraction:g}; "
                "each half needs at least 2 samples"
            )
        order = rng.permutation(n).astype(np.int64)
        parts.extend([np.sort(order[:n_train]), np.sort(order[n_train:])])
    return _Split(*parts)


def _claimant_module(claimant: nn.Module | Suspect) -> nn.Module:
    if isinstance(claimant, nn.Module):
        return claimant
    if not claimant.white_box:
        raise ValueError(f"MinGD needs the claimant's gradients, but {claimant.describe()} is black-box")
    return claimant.module()


@dataclass(frozen=True)
class _Measuring:
    """What both halves of dataset inference share: the checked samples, the split and the distance measures."""

    private: torch.Tensor
    public: torch.Tensor
    split: _Split
    groups: int
    used: Method
    measure_labels: Callable[[LabelFn], Callable[[torch.Tensor], FloatArray]]
    measure_gradients: Callable[[nn.Module], Callable[[torch.Tensor], FloatArray]]

    def claimant_features(self, claimant: nn.Module | Suspect) -> tuple[FloatArray, FloatArray]:
        """Boundary features of the claimant's model on the training halves (what the scorer learns from)."""
        if self.used == "mingd":
            on_claimant = self.measure_gradients(_claimant_module(claimant))
        else:
            labels = _module_labels(claimant) if isinstance(claimant, nn.Module) else claimant.labels
            on_claimant = self.measure_labels(labels)
        return (
            boundary_features(on_claimant(self.private[self.split.private_train]), self.groups),
            boundary_features(on_claimant(self.public[self.split.public_train]), self.groups),
        )


def _measuring(
    *,
    private_x: InputBatch,
    public_x: InputBatch,
    input_shape: tuple[int, ...],
    subject: str,
    num_classes: int,
    split_seed: int,
    used: Method,
    train_fraction: float,
    low: float,
    high: float,
    mingd_steps: int,
    walk_directions: int,
    walk_step: float,
    walk_max_steps: int,
) -> _Measuring:
    private = _as_batch(private_x, "private_x", low=low, high=high)
    public = _as_batch(public_x, "public_x", low=low, high=high)
    for batch, what in ((private, "private_x"), (public, "public_x")):
        if tuple(batch.shape[1:]) != input_shape:
            raise ValueError(
                f"{what} must have shape [N, {', '.join(map(str, input_shape))}] like the inputs of "
                f"{subject}, got {list(batch.shape)}"
            )
    split = _split(private.shape[0], public.shape[0], seed=split_seed, train_fraction=train_fraction)
    if used == "mingd":
        _check_count(1, mingd_steps=mingd_steps)
        groups = len(NORMS)
    else:
        _check_walk(walk_directions, walk_step, walk_max_steps, low, high)
        groups = min(len(DIRECTION_KINDS), walk_directions)
        if walk_directions % groups:
            raise ValueError(
                f"walk_directions must be a multiple of {groups} (one per noise kind), got {walk_directions}"
            )

    def walker(labels: LabelFn) -> Callable[[torch.Tensor], FloatArray]:
        def measure(batch: torch.Tensor) -> FloatArray:
            distances = _blind_walk(
                labels,
                batch,
                directions=walk_directions,
                step=walk_step,
                max_steps=walk_max_steps,
                seed=split_seed,
                low=low,
                high=high,
            ).distances
            # column j has noise kind j % 3: regroup by kind so that sorting stays within a kind
            return np.concatenate([distances[:, kind::groups] for kind in range(groups)], axis=1)

        return measure

    def descender(model: nn.Module) -> Callable[[torch.Tensor], FloatArray]:
        def measure(batch: torch.Tensor) -> FloatArray:
            return mingd_distances(model, batch, num_classes=num_classes, steps=mingd_steps, low=low, high=high)

        return measure

    return _Measuring(private, public, split, groups, used, walker, descender)


def claimant_side_features(
    *,
    claimant: nn.Module,
    private_x: InputBatch,
    public_x: InputBatch,
    input_shape: tuple[int, ...],
    num_classes: int,
    split_seed: int,
    method: Method,
    train_fraction: float = 0.5,
    low: float = 0.0,
    high: float = 1.0,
    mingd_steps: int = MINGD_STEPS,
    walk_directions: int = WALK_DIRECTIONS,
    walk_step: float = WALK_STEP,
    walk_max_steps: int = WALK_MAX_STEPS,
) -> dict[str, Any]:
    """The claimant's half of :func:`dataset_inference_test`, for a process of its own.

    The claimant's model and the suspect's code never share a process: the suspect's run gets these
    numbers (``claimant_features=``), never the claimant's file. ``method`` is the one the test will use.
    """
    if method not in get_args(Method):
        raise ValueError(f"unknown method {method!r}; expected one of {get_args(Method)}")
    measuring = _measuring(
        private_x=private_x, public_x=public_x, input_shape=input_shape, subject="the claimant model",
        num_classes=num_classes, split_seed=split_seed, used=method, train_fraction=train_fraction, low=low,
        high=high, mingd_steps=mingd_steps, walk_directions=walk_directions, walk_step=walk_step,
        walk_max_steps=walk_max_steps,
    )  # fmt: skip
    private, public = measuring.claimant_features(claimant)
    return {"method": method, "private": private, "public": public}


def blind_walk_query_budget(
    *,
    members: int,
    nonmembers: int,
    train_fraction: float = 0.5,
    directions: int = WALK_DIRECTIONS,
    max_steps: int = WALK_MAX_STEPS,
) -> int:
    """The most label queries dataset inference by Blind Walk sends a suspect for evidence of this size.

    Only the test halves are walked on the suspect (the training halves are measured on the claimant's
    model and the panel is local): one query per sample for its starting label, then one per step for
    every direction still walking, so at most ``n_test * (1 + directions * max_steps)``, reached when no
    walk flips before its cap. Input shape and classes do not enter: the walk counts samples, not values.
    """
    _check_count(1, directions=directions, max_steps=max_steps)
    split = _split(members, nonmembers, seed=0, train_fraction=train_fraction)
    tested = int(split.private_test.shape[0] + split.public_test.shape[0])
    return tested * (1 + directions * max_steps)


class _NativeLayout(nn.Module):
    """A panel member fed another layout of its native input's elements (row-major), as the panel's labels are."""

    def __init__(self, member: nn.Module, native: tuple[int, ...]) -> None:
        super().__init__()
        self.member = member
        self.native = native

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.member(x.reshape(x.shape[0], *self.native))
        return out


def _calibration_models(panel: ReferencePanel | Sequence[nn.Module], suspect: Suspect, members: int) -> list[nn.Module]:
    """The first ``members`` panel models, taking the suspect's input layout, on the suspect's GPU when it has one."""
    modules = list(panel.modules if isinstance(panel, ReferencePanel) else panel)[:members]
    device = getattr(suspect, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        # copies: the panel's own modules stay on the CPU, where its agreement answers are computed
        modules = [copy.deepcopy(module).to(device) for module in modules]
    if not isinstance(panel, ReferencePanel):
        return modules
    native, input_shape = tuple(panel.input_shape), suspect.input_shape
    if native == input_shape:
        return modules
    if math.prod(native) != math.prod(input_shape):
        raise ValueError(
            f"the reference panel takes inputs of shape {list(native)}, which cannot hold inputs of shape "
            f"{list(input_shape)}"
        )
    return [_NativeLayout(module, native) for module in modules]


def _permutation_count(permutations: int | None, alpha: float) -> int:
    """Enough draws that p can fall well below alpha (20 / alpha), at least PERMUTATIONS, at most MAX_PERMUTATIONS."""
    if permutations is not None:
        _check_count(1, permutations=permutations)
        return permutations
    return min(MAX_PERMUTATIONS, max(PERMUTATIONS, math.ceil(20 / alpha) - 1))


def _csv(values: Sequence[float]) -> str:
    return ",".join(f"{v:.6g}" for v in values)


def panel_p_value(statistic: float, panel_statistics: Sequence[float]) -> float:
    """The suspect's standing against the k panel models' statistics: a heavier-tailed prediction p-value.

    ``P[T_nu >= (t - mean) / (sd * sqrt(1 + 1/k))]`` with ``nu = min(k - 1, PANEL_TAIL_DF)`` degrees of
    freedom, not k - 1: an independent suspect need not be one more draw of the panel's recipe (another
    architecture, other data), and four degrees of freedom leave room for that. At alpha = 1e-3 the suspect
    must stand 7.2 panel deviations out (k - 1 = 19 would ask 3.6), which a normal statistic with up to
    about twice the panel's spread reaches less often than alpha (the margin shrinks at larger alpha). A
    suspect that does not beat every panel model is not said to stand out: its p-value is then at least the
    rank p-value ``(1 + #{panel >= t}) / (k + 1)``. Both changes only raise the p-value, so the guarantee
    of the plain prediction p-value holds.
    """
    values = [float(v) for v in panel_statistics]
    p_value = prediction_p_value(statistic, values, max_df=PANEL_TAIL_DF)
    if statistic <= max(values):
        p_value = max(p_value, empirical_p_value(statistic, values))
    return p_value


def dataset_inference_test(
    *,
    claimant: nn.Module | Suspect | None,
    suspect: Suspect,
    private_x: InputBatch,
    public_x: InputBatch,
    num_classes: int,
    split_seed: int,
    method: Method = "mingd",
    train_fraction: float = 0.5,
    low: float = 0.0,
    high: float = 1.0,
    fallback_to_blind_walk: bool = False,
    scorer: ScorerKind = "mlp",
    mingd_steps: int = MINGD_STEPS,
    walk_directions: int = WALK_DIRECTIONS,
    walk_step: float = WALK_STEP,
    walk_max_steps: int = WALK_MAX_STEPS,
    name: str = "dataset_inference",
    claimant_features: Mapping[str, Any] | None = None,
    panel: ReferencePanel | Sequence[nn.Module] | None = None,
    panel_members: int = PANEL_MEMBERS,
    alpha: float = DEFAULT_ALPHA,
    permutations: int | None = None,
) -> TestResult:
    """Dataset inference of the claimant's private samples in the suspect, as a :class:`TestResult`.

    ``claimant_features`` (from :func:`claimant_side_features`, measured in another process so that the
    claimant's model and the suspect never meet) replaces ``claimant``; its method must be this test's.

    ``train_fraction`` of each side (drawn from ``split_seed``) trains the scorer on the claimant's
    features; the rest is measured on the suspect and on the first ``panel_members`` models of ``panel``
    (see the module docstring for the p-value; without a panel only the within-suspect permutation test
    runs, which is valid for a random split alone). MinGD needs a white-box suspect: a black-box one
    raises ``ValueError`` unless ``fallback_to_blind_walk`` (then both sides use Blind Walk). A Blind
    Walk that could need more queries than the suspect has left is not started (inconclusive).
    ``QueryBudgetExceeded`` and ``SuspectError`` from the suspect propagate: the caller decides
    whether a suspect that stopped answering makes the verdict inconclusive.
    """
    started = time.perf_counter()
    _check_range(low, high)
    _check_count(2, num_classes=num_classes, panel_members=panel_members)
    _check_count(0, split_seed=split_seed)
    if not name:
        raise ValueError("a test needs a name")
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    if method not in get_args(Method):
        raise ValueError(f"unknown method {method!r}; expected one of {get_args(Method)}")
    if num_classes != suspect.num_classes:
        raise ValueError(f"num_classes is {num_classes} but {suspect.describe()} has {suspect.num_classes} classes")
    draws = _permutation_count(permutations, alpha)
    calibrating = None if panel is None else _calibration_models(panel, suspect, panel_members)
    used: Method = method
    if method == "mingd" and not suspect.white_box:
        if not fallback_to_blind_walk:
            raise ValueError(
                f"MinGD needs gradients, but {suspect.describe()} is black-box: use method='blind_walk' "
                "or allow fallback_to_blind_walk"
            )
        used = "blind_walk"
    measuring = _measuring(
        private_x=private_x, public_x=public_x, input_shape=suspect.input_shape, subject=suspect.describe(),
        num_classes=num_classes, split_seed=split_seed, used=used, train_fraction=train_fraction, low=low,
        high=high, mingd_steps=mingd_steps, walk_directions=walk_directions, walk_step=walk_step,
        walk_max_steps=walk_max_steps,
    )  # fmt: skip
    private, public, split, groups = measuring.private, measuring.public, measuring.split, measuring.groups
    walker, descender = measuring.measure_labels, measuring.measure_gradients
    if claimant_features is not None:
        if claimant_features.get("method") != used:
            raise ValueError("the claimant's features were measured with another method than this test uses")
        private_features = np.asarray(claimant_features["private"], dtype=np.float64)
        public_features = np.asarray(claimant_features["public"], dtype=np.float64)
    elif claimant is not None:
        private_features, public_features = measuring.claimant_features(claimant)
    else:
        raise ValueError("dataset inference needs the claimant's model or its measured features")

    n_private_test = int(split.private_test.shape[0])
    tested = n_private_test + int(split.public_test.shape[0])
    statistics: dict[str, StatValue] = {
        "method": used,
        "requested_method": method,
        "scorer": scorer,
        "score_bound": SCORE_BOUND,
        "n_private_train": int(split.private_train.shape[0]),
        "n_public_train": int(split.public_train.shape[0]),
        "n_private_test": n_private_test,
        "n_public_test": int(split.public_test.shape[0]),
        "split_seed": int(split_seed),
        "train_fraction": float(train_fraction),
        "split_digest": split.digest(),
        "alpha": float(alpha),
    }
    if used == "mingd":
        statistics["mingd_steps"] = int(mingd_steps)
    else:
        statistics.update(walk_directions=walk_directions, walk_step=walk_step, walk_max_steps=walk_max_steps)
        bound = tested * (1 + walk_directions * walk_max_steps)
        statistics["suspect_query_bound"] = bound
        left = suspect.remaining
        if left is not None and bound > left:
            statistics.update(p_value=1.0, suspect_queries=0, seconds=time.perf_counter() - started)
            reason = (
                f"Blind Walk may need up to {bound:,} label queries of {suspect.describe()} for {tested} test "
                f"samples, but {left:,} of its query budget are left, so it was not queried for this test "
                f"(a query budget of {suspect.queries + bound:,} lets it run)."
            )
            return TestResult(name, "dataset_inference", 1.0, statistics, False, reason)

    fitted = fit_scorer(private_features, public_features, kind=scorer, seed=split_seed)
    joined = torch.cat([private[split.private_test], public[split.public_test]])

    def within(measure: Callable[[torch.Tensor], FloatArray]) -> tuple[FloatArray, FloatArray, WelchResult]:
        scores = fitted.score(boundary_features(measure(joined), groups))
        return (
            scores[:n_private_test],
            scores[n_private_test:],
            welch_one_sided(scores[:n_private_test], scores[n_private_test:]),
        )

    before = suspect.queries
    on_suspect_private, on_suspect_public, welch = within(
        descender(suspect.module()) if used == "mingd" else walker(suspect.labels)
    )
    queries = suspect.queries - before
    statistics.update(
        claimant_train_accuracy=fitted.train_accuracy,
        mean_score_private=welch.mean_a,
        mean_score_public=welch.mean_b,
        t_statistic=welch.statistic,
        df=welch.df,
        welch_p_value=welch.p_value,
        suspect_queries=int(queries),
        queries_per_sample=queries / tested,
    )
    notes = [] if used == method else [f"{suspect.describe()} is black-box, so Blind Walk replaced MinGD."]

    def result(p_value: float, conclusive: bool, reason: str = "") -> TestResult:
        statistics["p_value"] = p_value
        statistics["seconds"] = time.perf_counter() - started
        sentence = " ".join([reason, *notes]).strip()
        return TestResult(name, "dataset_inference", p_value, statistics, conclusive, sentence)

    if not welch.conclusive:
        return result(1.0, False, welch.reason)
    permuted = permutation_one_sided(
        on_suspect_private, on_suspect_public, permutations=draws, seed=[split_seed, 0x9E57]
    )
    statistics.update(
        p_value_within=permuted.p_value,
        permutations=permuted.permutations,
        permutation="exact" if permuted.exact else "monte_carlo",
        permutation_floor=permuted.floor,
    )
    floor_reason = (
        f"With {permuted.n_a} private and {permuted.n_b} public test samples the permutation test cannot give a "
        f"p-value below {permuted.floor:.3g}, above alpha = {alpha:g}."
        if permuted.floor > alpha
        else ""
    )
    if calibrating is None:
        statistics["calibration"] = "none"
        notes.append(
            "Not calibrated against a reference panel: the p-value is valid only if the claimant's "
            "member / non-member split was random."
        )
        return result(permuted.p_value, not floor_reason, floor_reason)

    mark = time.perf_counter()
    panel_t: list[float] = []
    for model in calibrating:
        measure = descender(model) if used == "mingd" else walker(_module_labels(model))
        panel_t.append(within(measure)[2].statistic)  # NaN where a member's scores had no spread
    statistics.update(
        calibration="panel",
        panel_members=len(panel_t),
        panel_seconds=time.perf_counter() - mark,
        panel_t_statistics=_csv(panel_t),
    )
    finite = [t for t in panel_t if math.isfinite(t)]
    if len(finite) < len(panel_t) or len(finite) < 2 or float(np.std(finite)) == 0.0:
        why = (
            f"the reference panel has {len(panel_t)} model(s) for the calibration; it needs at least 2"
            if len(panel_t) < 2
            else "some reference models gave scores without spread, so the panel's statistics cannot be estimated"
        )
        return result(1.0, False, f"Not calibrated: {why}.")
    p_panel = panel_p_value(welch.statistic, finite)
    statistics.update(
        panel_t_mean=float(np.mean(finite)),
        panel_t_sd=float(np.std(finite, ddof=1)),
        panel_t_max=float(np.max(finite)),
        p_value_panel=p_panel,
        p_value_panel_rank=empirical_p_value(welch.statistic, finite),
    )
    # intersection-union: ownership needs both the suspect's own comparison and its standing against the panel
    return result(max(permuted.p_value, p_panel), not floor_reason, floor_reason)
