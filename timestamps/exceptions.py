"""Domain errors of the trust layer (mapped to HTTP in config/errors.py)."""


class LogRangeError(ValueError):
    """A log index, size or proof range outside the log."""

    code = "log_range"


class LogIntegrityError(RuntimeError):
    """The stored tree disagrees with itself: a checkpoint would not be consistent."""

    code = "log_integrity"


class LogNotFoundError(LookupError):
    """No log entry or checkpoint at that position."""

    code = "not_found"


class LogHaltedError(LogIntegrityError):
    """Checkpoint signing is halted: log_fsck found the stored log inconsistent and no operator cleared it."""

    code = "log_halted"
