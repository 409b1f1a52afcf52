"""The registry's fixed probe set: how a later run recognises a registered model by its behaviour.

A copy of a registered model need not have its bytes: a TorchScript archive renamed, an ONNX file
re-exported, the same weights behind an endpoint. So every registration records its labels on a fixed
set of off-distribution inputs, and a dispute's run asks the suspect the same: a suspect that answers
(nearly) as an earlier registration by someone else did is that model, first known at that
registration. Independent models of a task disagree on such inputs far more often than a copy does.

Pure NumPy (the sandbox child imports it). Inputs are drawn in the flat layout and reshaped, so
layouts of the same size ([64], [8, 8], [1, 8, 8]) get the same probes.
"""

from collections.abc import Sequence

import numpy as np

PROBES = 128
# the share of probe labels a suspect must give as a registration did to be taken for the same model
MIN_AGREEMENT = 0.95
_SEED = 0x6D6F64656C636F757274  # fixed: every registration and every run draw the same set


def registry_probe_inputs(input_shape: Sequence[int]) -> np.ndarray:
    """The fixed probe set for one input layout: half uniform noise, half sparse binary noise, in [0, 1]."""
    shape = tuple(int(d) for d in input_shape)
    size = int(np.prod(shape))
    rng = np.random.Generator(np.random.PCG64(_SEED))
    half = PROBES // 2
    uniform = rng.random((half, size), dtype=np.float32)
    sparse = (rng.random((PROBES - half, size)) < 0.2).astype(np.float32)
    return np.concatenate([uniform, sparse]).reshape(PROBES, *shape)


def probe_agreement(recorded: Sequence[int], answered: Sequence[int]) -> float:
    """The share of probes on which two models gave the same label (0 when either record is missing)."""
    if len(recorded) != PROBES or len(answered) != PROBES:
        return 0.0
    return float(np.mean(np.asarray(recorded) == np.asarray(answered)))
