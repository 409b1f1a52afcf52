"""Verdict API: a verdict and its evidence bundle, public once published (the holding arbiter reads them before)."""

import base64
import hashlib
import json
from typing import Any

from django.http import HttpResponse
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.http import quote_etag
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, ScopedRateThrottle, UserRateThrottle
from rest_framework.views import APIView

from verification import selectors
from verification.api.disputes import _bundle_url, _id_parameter, _public_id, _verdict_url
from verification.models import Verdict
from verification.services import verdicts as verdict_services


class VerdictApiView(APIView):
    """Anyone may read a published verdict; the arbiter who holds the dispute also reads it before that.

    Unlike the other public endpoints it authenticates callers (when they send credentials), to know that arbiter.
    """

    authentication_classes = api_settings.DEFAULT_AUTHENTICATION_CLASSES
    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle, UserRateThrottle]

    def visible_verdict(self, request: Request, verdict_id: str) -> Verdict:
        return selectors.verdict_get(public_id=_public_id(verdict_id, "verdict"), user=request.user)


class VerdictDetailApi(VerdictApiView):
    """A verdict: outcome, every statistic, the signed envelope, its time-stamp and log index."""

    class OutputSerializer(serializers.ModelSerializer):
        id = serializers.UUIDField(source="public_id")
        title = serializers.CharField(source="dispute.title", help_text="the dispute's title")
        predicate = serializers.JSONField(help_text="the signed verdict predicate: every statistic, p0, K, m, alpha")
        envelope = serializers.SerializerMethodField(help_text="the DSSE envelope over the in-toto Statement")
        timestamp_token = serializers.SerializerMethodField(
            help_text="the RFC 3161 token of the envelope (DER, base64)"
        )
        log_index = serializers.IntegerField(source="timestamp_token.log_entry_id")
        url = serializers.SerializerMethodField()
        bundle_url = serializers.SerializerMethodField()

        class Meta:
            model = Verdict
            ref_name = "Verdict"
            fields = [
                "id",
                "title",
                "outcome",
                "predicate",
                "envelope",
                "timestamp_token",
                "log_index",
                "created_at",
                "published_at",
                "url",
                "bundle_url",
            ]

        def get_envelope(self, obj: Verdict) -> dict[str, Any]:
            envelope: dict[str, Any] = json.loads(bytes(obj.envelope))
            return envelope

        def get_timestamp_token(self, obj: Verdict) -> str:
            return base64.b64encode(bytes(obj.timestamp_token.token)).decode()

        def get_url(self, obj: Verdict) -> str:
            return _verdict_url(obj)

        def get_bundle_url(self, obj: Verdict) -> str:
            return _bundle_url(obj)

    @extend_schema(
        parameters=[_id_parameter("verdict_id", "verdict")],
        responses=OutputSerializer,
        summary="A verdict (public once published)",
    )
    def get(self, request: Request, verdict_id: str) -> Response:
        return Response(self.OutputSerializer(self.visible_verdict(request, verdict_id)).data)


class VerdictBundleApi(VerdictApiView):
    """The verdict's evidence bundle (zip) that `modelcourt verify` and standard tools check offline."""

    # the web route /verdicts/<id>/bundle.zip counts against the same scope and client
    throttle_classes = [AnonRateThrottle, UserRateThrottle, ScopedRateThrottle]
    throttle_scope = "verdict-bundle"
    # the zip changes only when a newer checkpoint is signed (each minute at most, while the log grows)
    max_age = 60

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # the zip is not rendered; errors fall back to JSON whatever the client accepts (no 406 for application/zip)
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        parameters=[_id_parameter("verdict_id", "verdict")],
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            304: OpenApiResponse(description="the bundle named by If-None-Match is still the current one"),
            429: OpenApiResponse(description="too many downloads from this client; Retry-After gives the seconds"),
        },
        summary="A verdict's evidence bundle",
        description="Proofs run to the latest signed checkpoint. The ETag changes when a newer checkpoint is "
        "signed; send it back in If-None-Match to get a 304 while it has not.",
    )
    def get(self, request: Request, verdict_id: str) -> HttpResponse:
        verdict = self.visible_verdict(request, verdict_id)
        data = verdict_services.verdict_bundle(verdict=verdict)
        response = HttpResponse(data, content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="verdict-{verdict.public_id}.zip"'
        response["ETag"] = quote_etag(hashlib.sha256(data).hexdigest())
        if verdict.published_at is not None:
            patch_cache_control(response, public=True, max_age=self.max_age)
        else:  # the arbiter's preview: no shared cache may keep it
            patch_cache_control(response, private=True, no_cache=True, max_age=0)
        conditional = get_conditional_response(request._request, etag=response["ETag"], response=response)
        return conditional if conditional is not None else response
