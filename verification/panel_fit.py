"""Which reference panels can judge a registered model: the services' check before a dispute or stress test.

A panel serves models of its classes whose inputs take one of its accepted layouts (see
:mod:`verification.methods.panel_shapes`). Checking at filing turns what used to be a failed run
minutes later into a 400 that names the panel, what it serves and what the model takes.
"""

from collections.abc import Sequence

from ownership.models import RegisteredModel
from verification import reference
from verification.exceptions import DisputeError, StressTestError
from verification.methods.panel_shapes import PanelInterface

NO_PANEL = "no_panel"


def _shape_of(model: RegisteredModel) -> tuple[int, ...]:
    """The registration's input shape; empty (which no panel serves) when it is not a list of integers."""
    raw = model.input_shape if isinstance(model.input_shape, list | tuple) else []
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
        return ()
    return tuple(raw)


def panels_for(input_shape: Sequence[int], num_classes: int) -> list[PanelInterface]:
    """The panels that serve ``num_classes``-class models with inputs ``input_shape``, built-in first."""
    return [info for info in reference.panel_infos() if info.accepts(input_shape, num_classes)]


def panel_names_for(model: RegisteredModel) -> list[str]:
    """The names of the panels a dispute or stress test of ``model`` may choose."""
    return [info.name for info in panels_for(_shape_of(model), model.num_classes)]


def panel_refusal(*, panel: str, model: RegisteredModel) -> str:
    """Why panel ``panel`` cannot judge ``model``, as one sentence; empty when it can."""
    try:
        info = reference.panel_info(panel)
    except reference.PanelUnavailable as exc:
        return str(exc)
    return info.refusal(_shape_of(model), model.num_classes)


def panel_check(
    *, panel: str, model: RegisteredModel, error: type[DisputeError] | type[StressTestError] = DisputeError
) -> None:
    """Raise ``error`` (code ``no_panel``) when panel ``panel`` cannot judge ``model``, naming the panels that can."""
    refusal = panel_refusal(panel=panel, model=model)
    if not refusal:
        return
    fitting = panel_names_for(model)
    hint = f"; panels that fit it: {', '.join(fitting)}" if fitting else "; no installed reference panel fits it"
    raise error(refusal + hint, code=NO_PANEL)
