"""Public endpoints of the trust layer: the TSA, the log, the keys."""

import base64
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.parsers import BaseParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle, ScopedRateThrottle
from rest_framework.views import APIView

from timestamps import keys, selectors, services
from timestamps.models import SigningKey

QUERY_TYPE = "application/timestamp-query"
REPLY_TYPE = "application/timestamp-reply"
MAX_QUERY_BYTES = 16 * 1024


def b64(data: bytes) -> str:
    """Standard base64 (what sumdb/tlog and the C2SP formats use)."""
    return base64.b64encode(data).decode()


class PublicApiView(APIView):
    """No authentication, no CSRF, anonymous throttling."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle]


class TimestampQueryParser(BaseParser):
    """Reads an RFC 3161 query body as raw bytes, bounded in size."""

    media_type = QUERY_TYPE

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> bytes:
        data = stream.read(MAX_QUERY_BYTES + 1) if stream is not None else b""
        if len(data) > MAX_QUERY_BYTES:
            raise ValidationError({"detail": f"a time-stamp query is at most {MAX_QUERY_BYTES} bytes"})
        return bytes(data)


class TsaApi(PublicApiView):
    """RFC 3161 time-stamping over HTTP (RFC 3161 §3.4)."""

    parser_classes = [TimestampQueryParser]
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "tsa"

    @extend_schema(
        request={QUERY_TYPE: OpenApiTypes.BINARY},
        responses={(200, REPLY_TYPE): OpenApiTypes.BINARY},
        summary="Time-stamp a digest (RFC 3161)",
        description="Send a DER TimeStampReq; get a DER TimeStampResp. Malformed queries get a "
        "rejection status inside the reply. Every granted token is appended to the log.",
        auth=[],
    )
    def post(self, request: Request) -> HttpResponse:
        # DRF hands an empty body over as an empty dict, not as bytes.
        query = request.data if isinstance(request.data, bytes) else b""
        result = services.timestamp_issue(query_der=query)
        return HttpResponse(result.reply_der, content_type=REPLY_TYPE)


class KeyListApi(PublicApiView):
    """Every public key and certificate, current and retired, with its purpose."""

    class OutputSerializer(serializers.ModelSerializer):
        verifier_key = serializers.SerializerMethodField(help_text="signed-note verifier key (log keys)")

        class Meta:
            ref_name = "SigningKey"
            model = SigningKey
            fields = [
                "kid", "purpose", "algorithm", "status", "public_key_pem", "certificate_pem",
                "verifier_key", "created_at", "retired_at",
            ]  # fmt: skip

        def get_verifier_key(self, obj: SigningKey) -> str | None:
            return keys.log_verifier_key(obj) if obj.purpose == SigningKey.Purpose.LOG else None

    @extend_schema(responses=OutputSerializer(many=True), summary="Public keys and certificates", auth=[])
    def get(self, request: Request) -> Response:
        _ensure_keys()
        data = self.OutputSerializer(selectors.signing_key_list(), many=True).data
        return Response(data)


def _ensure_keys() -> None:
    # The embedded default makes its keys on first use; listing should show them all.
    for purpose in (SigningKey.Purpose.TSA, SigningKey.Purpose.LOG, SigningKey.Purpose.VERDICT):
        keys.key_current(purpose)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(record: SigningKey) -> dict[str, Any]:
    """RFC 7517/8037 JWK of a public key."""
    public = serialization.load_pem_public_key(record.public_key_pem.encode())
    common = {
        "kid": record.kid,
        "use": "sig",
        "key_ops": ["verify"],
        "status": record.status,
        "purpose": record.purpose,
    }
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "x": _b64url(raw), **common}
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise TypeError(f"unexpected key type for {record.kid}")
    numbers = public.public_numbers()
    return {
        "kty": "EC", "crv": "P-256", "alg": "ES256",
        "x": _b64url(numbers.x.to_bytes(32, "big")), "y": _b64url(numbers.y.to_bytes(32, "big")), **common,
    }  # fmt: skip


class JwksApi(PublicApiView):
    """The public keys as a JWK Set."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="JWK Set of the service keys", auth=[])
    def get(self, request: Request) -> Response:
        _ensure_keys()
        return Response({"keys": [jwk_of(record) for record in selectors.signing_key_list()]})


class CheckpointApi(PublicApiView):
    """The latest signed checkpoint (C2SP tlog-checkpoint as a signed note)."""

    @extend_schema(
        responses={(200, "text/plain"): OpenApiTypes.STR},
        parameters=[OpenApiParameter("size", int, description="a checkpoint signed earlier, at this size")],
        summary="Signed log checkpoint",
        auth=[],
    )
    def get(self, request: Request) -> HttpResponse:
        raw = request.query_params.get("size")
        if raw is None:
            checkpoint = services.checkpoint_publish()
        else:
            checkpoint = selectors.checkpoint_get(size=_non_negative(raw, "size"))
        return HttpResponse(checkpoint.note, content_type="text/plain; charset=utf-8")


class LogKeyApi(PublicApiView):
    """The current note verifier key of the log."""

    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR}, summary="Log verifier key", auth=[])
    def get(self, request: Request) -> HttpResponse:
        record = keys.key_current(SigningKey.Purpose.LOG).record
        return HttpResponse(keys.log_verifier_key(record) + "\n", content_type="text/plain; charset=utf-8")


def _non_negative(raw: str | None, name: str) -> int:
    if raw is None or raw == "":
        raise ValidationError({name: "this query parameter is required"})
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({name: "must be an integer"}) from None
    if value < 0 or value >= 1 << 62:
        raise ValidationError({name: "must be a non-negative integer below 2**62"})
    return value


class LogEntryApi(PublicApiView):
    """One log entry, base64."""

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "LogEntry"

        index = serializers.IntegerField()
        entry_b64 = serializers.CharField()

    @extend_schema(responses=OutputSerializer, summary="Log entry", auth=[])
    def get(self, request: Request, index: int) -> Response:
        entry = selectors.log_entry_get(index=index)
        return Response(self.OutputSerializer({"index": entry.index, "entry_b64": b64(bytes(entry.data))}).data)


class InclusionProofApi(PublicApiView):
    """RFC 9162 inclusion proof of an entry in the tree of a given size."""

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "InclusionProof"

        index = serializers.IntegerField()
        size = serializers.IntegerField()
        hashes = serializers.ListField(child=serializers.CharField())

    @extend_schema(
        parameters=[OpenApiParameter("index", int, required=True), OpenApiParameter("size", int, required=True)],
        responses={200: OutputSerializer, 400: OpenApiResponse(description="index or size outside the log")},
        summary="Inclusion proof",
        auth=[],
    )
    def get(self, request: Request) -> Response:
        index = _non_negative(request.query_params.get("index"), "index")
        size = _non_negative(request.query_params.get("size"), "size")
        proof = selectors.log_inclusion_proof(index=index, size=size)
        return Response({"index": index, "size": size, "hashes": [b64(h) for h in proof]})


class ConsistencyProofApi(PublicApiView):
    """RFC 9162 consistency proof between two tree sizes."""

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "ConsistencyProof"

        first = serializers.IntegerField()
        second = serializers.IntegerField()
        hashes = serializers.ListField(child=serializers.CharField())

    @extend_schema(
        parameters=[OpenApiParameter("first", int, required=True), OpenApiParameter("second", int, required=True)],
        responses={200: OutputSerializer, 400: OpenApiResponse(description="sizes outside the log")},
        summary="Consistency proof",
        auth=[],
    )
    def get(self, request: Request) -> Response:
        first = _non_negative(request.query_params.get("first"), "first")
        second = _non_negative(request.query_params.get("second"), "second")
        proof = selectors.log_consistency_proof(first=first, second=second)
        return Response({"first": first, "second": second, "hashes": [b64(h) for h in proof]})
