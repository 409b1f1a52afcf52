"""Liveness, and the facts an operator or a verifier wants before trusting this service's verdicts."""

from typing import Any

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import AnonRateThrottle
from rest_framework.views import APIView

from ownership.roles import Role, user_has_role
from workers.confinement import policy_describe, policy_record


class HealthApi(APIView):
    """The database answers; the sandbox policy in force (its name and SHA-256), and its layers on this host."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonRateThrottle]

    @extend_schema(
        summary="Service health and sandbox policy",
        auth=[],
        responses=inline_serializer(
            "Health",
            {
                "status": serializers.CharField(),
                "database": serializers.CharField(),
                "sandbox_policy": serializers.DictField(child=serializers.CharField()),
                "sandbox": serializers.DictField(),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            database = "ok"
        except Exception:  # any database fault: "unavailable", and the answer says so
            database = "unavailable"
        body = {
            "status": "ok" if database == "ok" else "degraded",
            "database": database,
            "sandbox_policy": policy_record(),
            "sandbox": policy_describe(),
        }
        return Response(body, status=200 if database == "ok" else 503)


@login_required
def after_login(request: HttpRequest) -> HttpResponse:
    """Where a user lands after signing in: an arbiter's disputes, an owner's models, else the home page."""
    if user_has_role(request.user, Role.ARBITER):
        return redirect("arbiter-disputes")
    if user_has_role(request.user, Role.OWNER):
        return redirect("owner-models")
    return redirect("home")
