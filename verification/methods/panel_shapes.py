"""What a reference panel serves: its task, classes, native input shape and the input layouts it accepts.

A panel's members take inputs in one native shape (the built-in digits panel: 64 flat features), but a
registration may lay the same features out otherwise (``[8, 8]``, ``[1, 8, 8]``). A layout the panel
declares as accepted has the native shape's element count; queries in it are reshaped (row-major) to
the native shape before the panel answers them. Pure data and NumPy: the web process reads it without torch.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ACCEPTED_KEY", "PanelInterface", "format_shape", "interface_from_manifest", "parse_shapes"]

# the manifest key that lists the layouts besides the native shape; absent means the native shape only
ACCEPTED_KEY = "accepted_input_shapes"
MAX_DIMS = 8


def format_shape(shape: Sequence[int]) -> str:
    """``[1, 8, 8]``: how a shape reads in a sentence."""
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _shape(raw: Any) -> tuple[int, ...]:
    if not isinstance(raw, list | tuple) or not 1 <= len(raw) <= MAX_DIMS:
        raise ValueError(f"an input shape must be a list of 1 to {MAX_DIMS} dimensions")
    try:
        dims = tuple(operator.index(d) for d in raw if not isinstance(d, bool))
    except TypeError:
        dims = ()
    if len(dims) != len(raw) or min(dims) < 1:
        raise ValueError("an input shape's dimensions must be positive integers")
    return dims


def parse_shapes(native: Any, accepted: Any = None) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """The native shape and every accepted layout (native first, no repeats), checked to hold as many elements."""
    base = _shape(native)
    layouts = [base]
    for raw in accepted or ():
        layout = _shape(raw)
        if math.prod(layout) != math.prod(base):
            raise ValueError(
                f"the accepted layout {format_shape(layout)} does not hold the {math.prod(base)} elements "
                f"of the native shape {format_shape(base)}"
            )
        if layout not in layouts:
            layouts.append(layout)
    return base, tuple(layouts)


@dataclass(frozen=True)
class PanelInterface:
    """What one panel serves: ``accepted_shapes`` starts with the native ``input_shape``."""

    name: str
    task: str
    num_classes: int
    input_shape: tuple[int, ...]
    accepted_shapes: tuple[tuple[int, ...], ...]
    size: int

    def accepts(self, input_shape: Sequence[int], num_classes: int) -> bool:
        """Whether a ``num_classes``-class model with inputs ``input_shape`` can be judged against this panel."""
        return int(num_classes) == self.num_classes and tuple(int(d) for d in input_shape) in self.accepted_shapes

    def refusal(self, input_shape: Sequence[int], num_classes: int, *, subject: str = "this model") -> str:
        """Why the panel cannot serve that model, as one sentence; empty when it can."""
        if self.accepts(input_shape, num_classes):
            return ""
        shapes = [format_shape(s) for s in self.accepted_shapes]
        served = shapes[0] if len(shapes) == 1 else f"{', '.join(shapes[:-1])} or {shapes[-1]}"
        takes = f"takes {format_shape(input_shape)}"
        if int(num_classes) != self.num_classes:
            takes = f"has {int(num_classes)} classes and {takes}"
        return (
            f"the reference panel {self.name!r} serves {self.num_classes}-class models with inputs {served}; "
            f"{subject} {takes}"
        )

    def to_native(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Queries ``[N, *layout]`` in an accepted layout as ``[N, *input_shape]``; ValueError for any other layout."""
        layout = tuple(int(d) for d in x.shape[1:])
        if layout == self.input_shape:
            return x
        if x.ndim < 1 or layout not in self.accepted_shapes:
            raise ValueError(
                f"the reference panel {self.name!r} takes inputs {', '.join(map(format_shape, self.accepted_shapes))}, "
                f"not {format_shape(layout)}"
            )
        return x.reshape((x.shape[0], *self.input_shape))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for an API answer."""
        return {
            "name": self.name,
            "task": self.task,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "accepted_input_shapes": [list(s) for s in self.accepted_shapes],
            "size": self.size,
        }


def interface_from_manifest(name: str, manifest: Mapping[str, Any]) -> PanelInterface:
    """The interface a saved panel's manifest declares; ValueError when the manifest does not say it plainly."""
    classes = manifest.get("num_classes")
    members = manifest.get("members")
    task = manifest.get("task")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError("the panel manifest has no number of classes")
    if not isinstance(members, list) or not isinstance(task, str):
        raise ValueError("the panel manifest has no task or members")
    native, accepted = parse_shapes(manifest.get("input_shape"), manifest.get(ACCEPTED_KEY))
    return PanelInterface(
        name=name, task=task, num_classes=classes, input_shape=native, accepted_shapes=accepted, size=len(members)
    )
