"""modelcourt guard: watermark a model's API answers, journal them as evidence, and raise extraction alarms.

A light library (Python's standard library and NumPy only) that a registered model's owner runs in their own
serving stack: as a wrapped predict function, WSGI middleware or a reverse proxy. See docs/guard.md.
"""

from modelcourt.guard.config import GuardConfig, GuardConfigError
from modelcourt.guard.prada import Alarm, PradaDetector
from modelcourt.guard.proxy import serve
from modelcourt.guard.shapiro import shapiro_w
from modelcourt.guard.watermark import ResponseWatermark
from modelcourt.guard.wrap import Guard, GuardMiddleware

__all__ = [
    "Alarm",
    "Guard",
    "GuardConfig",
    "GuardConfigError",
    "GuardMiddleware",
    "PradaDetector",
    "ResponseWatermark",
    "serve",
    "shapiro_w",
]
