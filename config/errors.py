"""One place that maps domain errors to HTTP: every 4xx has a code and a sentence."""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from ownership.escrow import EscrowError
from ownership.exceptions import ModelInDisputeError, RegistryError, RegistryNotFoundError, UploadTooLargeError
from timestamps.exceptions import LogIntegrityError, LogNotFoundError, LogRangeError
from timestamps.keys import KeyConfigurationError
from verification.exceptions import (
    DisputeError,
    DisputeNotFoundError,
    DisputeStateError,
    StressTestError,
    StressTestNotFoundError,
)

# Order matters: subclasses before their bases.
logger = logging.getLogger(__name__)

DOMAIN_ERRORS: dict[type[Exception], int] = {
    UploadTooLargeError: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    ModelInDisputeError: status.HTTP_409_CONFLICT,
    RegistryError: status.HTTP_400_BAD_REQUEST,
    DisputeStateError: status.HTTP_409_CONFLICT,
    DisputeError: status.HTTP_400_BAD_REQUEST,
    DisputeNotFoundError: status.HTTP_404_NOT_FOUND,
    StressTestError: status.HTTP_400_BAD_REQUEST,
    StressTestNotFoundError: status.HTTP_404_NOT_FOUND,
    RegistryNotFoundError: status.HTTP_404_NOT_FOUND,
    EscrowError: status.HTTP_503_SERVICE_UNAVAILABLE,
    LogRangeError: status.HTTP_400_BAD_REQUEST,
    LogNotFoundError: status.HTTP_404_NOT_FOUND,
    DjangoValidationError: status.HTTP_400_BAD_REQUEST,
    LogIntegrityError: status.HTTP_503_SERVICE_UNAVAILABLE,
    KeyConfigurationError: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def _first_sentence(detail: Any) -> str:
    if isinstance(detail, dict):
        for field, value in detail.items():
            text = _first_sentence(value)
            return text if field in {"detail", "non_field_errors"} else f"{field}: {text}"
    if isinstance(detail, list) and detail:
        return _first_sentence(detail[0])
    return str(detail)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Render domain and DRF errors as {"code", "detail", "fields"?}."""
    if isinstance(exc, KeyConfigurationError | EscrowError):
        # The details (paths, variable names) are for operators, not callers.
        logger.error("service key configuration: %s", exc)
        return Response(
            {"code": "keys_unavailable", "detail": "the service's keys are misconfigured; operators have been told"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    for error_type, http_status in DOMAIN_ERRORS.items():
        if isinstance(exc, error_type):
            code = getattr(exc, "code", None) or "invalid"
            message = " ".join(exc.messages) if isinstance(exc, DjangoValidationError) else str(exc)
            return Response({"code": code, "detail": message}, status=http_status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    body: dict[str, Any] = {"code": exc.get_codes() if isinstance(exc.get_codes(), str) else "invalid"}
    body["detail"] = _first_sentence(exc.detail)
    if isinstance(exc, exceptions.ValidationError) and isinstance(exc.detail, dict):
        body["fields"] = exc.detail
    response.data = body
    return response
