"""Domain errors of the registry (mapped to HTTP in config/errors.py)."""


class RegistryError(ValueError):
    """A registration or evidence request the owner can correct."""

    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code:
            self.code = code


class UploadTooLargeError(RegistryError):
    """An upload over the configured limit."""

    code = "too_large"


class ValidationBusyError(RegistryError):
    """Too many of this owner's uploads are still waiting for their check (answered 429)."""

    code = "busy"


class ModelInDisputeError(RegistryError):
    """A model that a dispute refers to cannot be deleted."""

    code = "in_dispute"


class RegistryNotFoundError(LookupError):
    """No such model, evidence set or receipt (for this caller)."""

    code = "not_found"


class DrawLimitError(RegistryError):
    """The owner drew the most generated watermarks allowed in 24 hours (answered 429)."""

    code = "draw_limit"


class AlarmLimitError(RegistryError):
    """A model's guard reported the most alarms allowed in an hour (answered 429)."""

    code = "alarm_limit"
