"""Domain errors of disputes and verdicts (mapped to HTTP in config/errors.py)."""


class DisputeError(ValueError):
    """A dispute request the arbiter can correct."""

    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class DisputeStateError(DisputeError):
    """An action the dispute's current state does not allow (publish before decided, withdraw after)."""

    code = "wrong_state"


class DisputeNotFoundError(LookupError):
    """No such dispute or verdict (for this caller)."""

    code = "not_found"


class RunFailed(Exception):  # noqa: N818 (the run's end state, with the reason shown to the arbiter)
    """A verification run that cannot reach a verdict: the reason is for people."""


class OperatorFault(RunFailed):
    """The service's own trust layer (log, keys, time-stamping, escrow) failed: no verdict may be signed.

    The claimant's evidence is not at fault; the reason tells the operators what to repair.
    """


class StressTestError(ValueError):
    """A stress-test request the owner can correct (a model, evidence set, theft or panel that does not fit)."""

    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class StressTestNotFoundError(LookupError):
    """No such stress test among the caller's."""

    code = "not_found"
