"""The Shapiro-Wilk W statistic in NumPy, with Royston's (1992, 1995) approximation of the coefficients.

PRADA judges a client's stream of query distances by W: benign streams give distances that look
normal (W near 1), extraction streams give skewed, clustered distances (W falls). Only W is needed,
not its p-value, so this module computes W alone; it agrees with Royston's algorithm AS R94 (the one
`scipy.stats.shapiro` runs) to rounding.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_SAMPLES", "MIN_SAMPLES", "shapiro_w"]

MIN_SAMPLES = 3
MAX_SAMPLES = 5000  # Royston's approximation is validated up to this size

# Royston's polynomials in u = 1/sqrt(n) for the last and second-last coefficients (lowest power first)
_LAST = (0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056)
_SECOND_LAST = (0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633)
_NORMAL = NormalDist()


def _poly(coefficients: tuple[float, ...], u: float) -> float:
    return sum(c * u**power for power, c in enumerate(coefficients))


@lru_cache(maxsize=64)
def _half_coefficients(n: int) -> tuple[float, ...]:
    """The positive coefficients a_1..a_{n//2} for the largest-to-middle order statistics (n >= 3)."""
    if n == 3:
        return (math.sqrt(0.5),)
    half = n // 2
    # Blom's approximation of the expected normal order statistics, lower half (negative values)
    m = [_NORMAL.inv_cdf((i - 0.375) / (n + 0.25)) for i in range(1, half + 1)]
    summ2 = 2.0 * sum(v * v for v in m)
    root = math.sqrt(summ2)
    u = 1.0 / math.sqrt(n)
    a1 = _poly(_LAST, u) - m[0] / root
    if n > 5:
        a2 = _poly(_SECOND_LAST, u) - m[1] / root
        scale = math.sqrt((summ2 - 2.0 * m[0] ** 2 - 2.0 * m[1] ** 2) / (1.0 - 2.0 * a1**2 - 2.0 * a2**2))
        return (a1, a2, *(-v / scale for v in m[2:]))
    scale = math.sqrt((summ2 - 2.0 * m[0] ** 2) / (1.0 - 2.0 * a1**2))
    return (a1, *(-v / scale for v in m[1:]))


@lru_cache(maxsize=64)
def _coefficients(n: int) -> tuple[npt.NDArray[np.float64], float]:
    """All n coefficients, centred (antisymmetric: negative for the lower half, zero in the middle of an odd n),
    and their sum of squares."""
    half = np.asarray(_half_coefficients(n), dtype=np.float64)
    middle = np.zeros(n % 2, dtype=np.float64)
    full = np.concatenate([-half, middle, half[::-1]])
    full -= full.mean()
    full.setflags(write=False)
    return full, float(full @ full)


def shapiro_w(sample: npt.ArrayLike) -> float:
    """W for 3 to 5000 finite values; ValueError for fewer, more, non-finite or all-equal values.

    W is the squared correlation between the sorted sample and the coefficients, computed as
    1 - (1 - r^2) the way AS R94 does, which keeps its precision when W is close to 1.
    """
    x = np.sort(np.asarray(sample, dtype=np.float64), axis=None)
    n = x.size
    if not MIN_SAMPLES <= n <= MAX_SAMPLES:
        raise ValueError(f"the Shapiro-Wilk W needs {MIN_SAMPLES} to {MAX_SAMPLES} values, got {n}")
    spread = float(x[-1] - x[0])
    if not math.isfinite(spread):  # NaN sorts last, infinities at the ends: the spread shows both
        raise ValueError("the Shapiro-Wilk W needs finite values")
    if spread <= 0:
        raise ValueError("the Shapiro-Wilk W is undefined when all values are equal")
    a, ssa = _coefficients(n)
    centred = x / spread
    centred -= centred.sum() / n  # the mean, as ndarray.mean computes it, with less overhead
    ssx = float(centred.dot(centred))
    sax = float(a.dot(centred))
    root = math.sqrt(ssa * ssx)
    return 1.0 - (root - sax) * (root + sax) / (ssa * ssx)
