"""Fingerprints: inputs the owner's model (and models derived from it) label one way, independent models not.

Conferrable fingerprints in the sense of Lukas et al. (ICLR 2021), made simply: from natural samples,
a targeted L-infinity perturbation pushes the owner's model, and optional surrogates derived from it
(fine-tuned or pruned copies the owner made), toward a target class with a margin, while pushing a
set of the owner's own independent reference models away from that class. Only candidates the
owner's model labels as the target and that few references agree with are kept. The claimed label
is always the owner's model's answer on the final input.

The references used here must not be the panel that later judges the claim (the panel sets p0 and
screens for false claims): pass models trained by the owner with other seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

__all__ = ["FingerprintSet", "generate_fingerprints"]


@dataclass(frozen=True)
class FingerprintSet:
    """Fingerprint inputs with the owner's labels, and how they were selected."""

    inputs: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    candidates: int
    reference_agreement: float
    surrogate_agreement: float
    eps: float

    def as_evidence(self) -> dict[str, npt.NDArray[np.generic]]:
        """The arrays as an evidence set (``inputs``, ``labels``)."""
        return {"inputs": self.inputs, "labels": self.labels}


def _mean_probs(models: Sequence[nn.Module], x: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.softmax(m(x), dim=1) for m in models]).mean(dim=0)


def generate_fingerprints(
    owner: nn.Module,
    natural_x: npt.ArrayLike,
    *,
    references: Sequence[nn.Module],
    surrogates: Sequence[nn.Module] = (),
    count: int = 40,
    eps: float = 0.25,
    steps: int = 60,
    step_size: float | None = None,
    reference_weight: float = 1.0,
    max_reference_agreement: float = 0.2,
    low: float = 0.0,
    high: float = 1.0,
    seed: int = 0,
) -> FingerprintSet:
    """Up to ``count`` conferrable fingerprints crafted from ``natural_x`` (more candidates than needed are tried).

    A candidate is kept when the owner's model and most surrogates label it with the target class and
    at most ``max_reference_agreement`` of the references do. Raises ``ValueError`` when fewer than
    ``count`` survive, with how many did.
    """
    if count < 1 or eps <= 0 or steps < 1 or not references:
        raise ValueError("need count >= 1, eps > 0, steps >= 1 and at least one reference model")
    x_nat = torch.as_tensor(np.asarray(natural_x, dtype=np.float32))
    if len(x_nat) == 0:
        raise ValueError("fingerprints are crafted from natural samples; none were given")
    alpha = step_size if step_size is not None else 2.5 * eps / steps
    rng = np.random.default_rng([seed, 0xF1F])
    pool = min(len(x_nat), 3 * count)
    start = x_nat[rng.choice(len(x_nat), size=pool, replace=False)]
    models = [owner, *surrogates, *references]
    for m in models:
        m.eval()
    with torch.no_grad():
        source = owner(start).argmax(dim=1)
        n_classes = int(owner(start[:1]).shape[1])
    # a random target other than the owner's own answer on the natural sample
    offset = torch.as_tensor(rng.integers(1, n_classes, size=pool))
    target = (source + offset) % n_classes

    delta = torch.zeros_like(start)
    for _ in range(steps):
        delta.requires_grad_(True)
        x = (start + delta).clamp(low, high)
        toward = nn.functional.cross_entropy(owner(x), target)
        for s in surrogates:
            toward = toward + nn.functional.cross_entropy(s(x), target) / len(surrogates)
        ref_p = _mean_probs(references, x).gather(1, target[:, None]).squeeze(1)
        # -log(1 - p): the references' belief in the target grows this without bound
        away = -torch.log1p(-ref_p.clamp(max=1 - 1e-6)).mean()
        loss = toward + reference_weight * away
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta - alpha * grad.sign()).clamp(-eps, eps)
            delta = (start + delta).clamp(low, high) - start

    with torch.no_grad():
        final = (start + delta).clamp(low, high)
        owner_labels = owner(final).argmax(dim=1)
        ref_agree = torch.stack([(r(final).argmax(dim=1) == owner_labels).float() for r in references]).mean(dim=0)
        if surrogates:
            sur_agree = torch.stack([(s(final).argmax(dim=1) == owner_labels).float() for s in surrogates]).mean(0)
        else:
            sur_agree = torch.ones(pool)
    keep = (owner_labels == target) & (ref_agree <= max_reference_agreement) & (sur_agree >= 0.5)
    # best candidates first: survive the surrogates, then fool the references least
    order = sorted(np.flatnonzero(keep.numpy()), key=lambda i: (-float(sur_agree[i]), float(ref_agree[i])))
    if len(order) < count:
        raise ValueError(
            f"only {len(order)} of {pool} candidates became fingerprints (need {count}); "
            "raise eps or steps, or give more natural samples"
        )
    chosen = np.asarray(order[:count], dtype=np.int64)
    return FingerprintSet(
        inputs=final[chosen].numpy().astype(np.float32),
        labels=owner_labels[chosen].numpy().astype(np.int64),
        candidates=pool,
        reference_agreement=float(ref_agree[chosen].mean()),
        surrogate_agreement=float(sur_agree[chosen].mean()),
        eps=eps,
    )
