"""Dispute and verdict API routes (under /api/v1/).

Ids are matched as strings and parsed in the views, so that a malformed one is a 404 with a JSON sentence.
"""

from django.urls import path

from verification.api import disputes as dispute_api
from verification.api import requests as request_api
from verification.api import sightings as sighting_api
from verification.api import stress as stress_api
from verification.api import verdicts as verdict_api

urlpatterns = [
    path("panels/", dispute_api.PanelListApi.as_view(), name="panel-list"),
    path("sightings/", sighting_api.SightingCreateApi.as_view(), name="sighting-list"),
    path("sightings/<str:sighting_id>", sighting_api.SightingDetailApi.as_view(), name="sighting-detail"),
    path("disputes/", dispute_api.DisputeListApi.as_view(), name="dispute-list"),
    path("disputes/<str:dispute_id>", dispute_api.DisputeDetailApi.as_view(), name="dispute-detail"),
    path("disputes/<str:dispute_id>/publish", dispute_api.DisputePublishApi.as_view(), name="dispute-publish"),
    path("disputes/<str:dispute_id>/withdraw", dispute_api.DisputeWithdrawApi.as_view(), name="dispute-withdraw"),
    path("disputes/<str:dispute_id>/retry", dispute_api.DisputeRetryApi.as_view(), name="dispute-retry"),
    path("dispute-requests/", request_api.DisputeRequestListApi.as_view(), name="dispute-request-list"),
    path("dispute-requests/inbox", request_api.DisputeRequestInboxApi.as_view(), name="dispute-request-inbox"),
    path(
        "dispute-requests/<str:request_id>",
        request_api.DisputeRequestDetailApi.as_view(),
        name="dispute-request-detail",
    ),
    path(
        "dispute-requests/<str:request_id>/withdraw",
        request_api.DisputeRequestWithdrawApi.as_view(),
        name="dispute-request-withdraw",
    ),
    path(
        "dispute-requests/<str:request_id>/accept",
        request_api.DisputeRequestAcceptApi.as_view(),
        name="dispute-request-accept",
    ),
    path(
        "dispute-requests/<str:request_id>/decline",
        request_api.DisputeRequestDeclineApi.as_view(),
        name="dispute-request-decline",
    ),
    path("stress-tests/", stress_api.StressTestListApi.as_view(), name="stress-test-list"),
    path("stress-tests/<str:stress_test_id>", stress_api.StressTestDetailApi.as_view(), name="stress-test-detail"),
    path("verdicts/<str:verdict_id>", verdict_api.VerdictDetailApi.as_view(), name="verdict-detail"),
    path("verdicts/<str:verdict_id>/bundle", verdict_api.VerdictBundleApi.as_view(), name="verdict-bundle"),
]
