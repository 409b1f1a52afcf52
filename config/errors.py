"""One place that maps domain errors to HTTP: every 4xx has a code and a sentence."""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from ownership.escrow import EscrowError
from ownership.exceptions import (
    AlarmLimitError,
    DrawLimitError,
    ModelInDisputeError,
    RegistryError,
    RegistryNotFoundError,
    UploadTooLargeError,
    ValidationBusyError,
)
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
    ValidationBusyError: status.HTTP_429_TOO_MANY_REQUESTS,
    DrawLimitError: status.HTTP_429_TOO_MANY_REQUESTS,
    AlarmLimitError: status.HTTP_429_TOO_MANY_REQUESTS,
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


# Django's own error views (handler400/403/404/500 in config/urls.py): the API answers JSON there too,
# never an HTML page or a traceback; the web pages keep Django's templates.
API_PREFIX = "/api/"


def _api_error(request: HttpRequest, code: str, detail: str, http_status: int) -> HttpResponse | None:
    if not request.path.startswith(API_PREFIX):
        return None
    return JsonResponse({"code": code, "detail": detail}, status=http_status)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """400 outside DRF (e.g. a disallowed Host header)."""
    return _api_error(request, "bad_request", "the request is malformed", 400) or defaults.bad_request(
        request, exception
    )


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """403 outside DRF."""
    return _api_error(
        request, "permission_denied", "you do not have permission to perform this action", 403
    ) or defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """404 for an address no route matches; the sentence does not echo the address."""
    return _api_error(request, "not_found", "no API endpoint at this address", 404) or defaults.page_not_found(
        request, exception
    )


def server_error(request: HttpRequest) -> HttpResponse:
    """500 for an unhandled exception: Django has logged it (django.request); the caller learns nothing of it."""
    return _api_error(
        request, "server_error", "the server failed to answer this request; its operators have been told", 500
    ) or defaults.server_error(request)
