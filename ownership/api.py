"""Account endpoints (the registry's endpoints join here)."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from ownership.roles import user_roles


class TokenApi(ObtainAuthToken):
    """Exchange a username and password for an API token."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "login"


class MeApi(APIView):
    """Who the caller is and which roles they hold."""

    class OutputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "Me"

        username = serializers.CharField()
        roles = serializers.ListField(child=serializers.CharField())

    @extend_schema(responses=OutputSerializer, summary="The authenticated user")
    def get(self, request: Request) -> Response:
        data = {"username": request.user.get_username(), "roles": user_roles(request.user)}
        return Response(self.OutputSerializer(data).data)
