"""Dispute and verdict API routes (under /api/v1/).

Ids are matched as strings and parsed in the views, so that a malformed one is a 404 with a JSON sentence.
"""

from django.urls import path

from verification import api, stress_api

urlpatterns = [
    path("panels/", api.PanelListApi.as_view(), name="panel-list"),
    path("disputes/", api.DisputeListApi.as_view(), name="dispute-list"),
    path("disputes/<str:dispute_id>", api.DisputeDetailApi.as_view(), name="dispute-detail"),
    path("disputes/<str:dispute_id>/publish", api.DisputePublishApi.as_view(), name="dispute-publish"),
    path("disputes/<str:dispute_id>/withdraw", api.DisputeWithdrawApi.as_view(), name="dispute-withdraw"),
    path("disputes/<str:dispute_id>/retry", api.DisputeRetryApi.as_view(), name="dispute-retry"),
    path("dispute-requests/", api.DisputeRequestListApi.as_view(), name="dispute-request-list"),
    path("dispute-requests/inbox", api.DisputeRequestInboxApi.as_view(), name="dispute-request-inbox"),
    path("dispute-requests/<str:request_id>", api.DisputeRequestDetailApi.as_view(), name="dispute-request-detail"),
    path(
        "dispute-requests/<str:request_id>/withdraw",
        api.DisputeRequestWithdrawApi.as_view(),
        name="dispute-request-withdraw",
    ),
    path(
        "dispute-requests/<str:request_id>/accept", api.DisputeRequestAcceptApi.as_view(), name="dispute-request-accept"
    ),
    path(
        "dispute-requests/<str:request_id>/decline",
        api.DisputeRequestDeclineApi.as_view(),
        name="dispute-request-decline",
    ),
    path("stress-tests/", stress_api.StressTestListApi.as_view(), name="stress-test-list"),
    path("stress-tests/<str:stress_test_id>", stress_api.StressTestDetailApi.as_view(), name="stress-test-detail"),
    path("verdicts/<str:verdict_id>", api.VerdictDetailApi.as_view(), name="verdict-detail"),
    path("verdicts/<str:verdict_id>/bundle", api.VerdictBundleApi.as_view(), name="verdict-bundle"),
]
