"""Arbiter, owner and public pages of disputes and verdicts."""

from django.urls import path

from verification.views import disputes as dispute_views
from verification.views import requests as request_views
from verification.views import stress as stress_views
from verification.views import verdicts as verdict_views

urlpatterns = [
    path("disputes/", dispute_views.DisputeListView.as_view(), name="arbiter-disputes"),
    path("disputes/new", dispute_views.DisputeFileView.as_view(), name="arbiter-dispute-file"),
    path("disputes/<uuid:dispute_id>", dispute_views.DisputeDetailView.as_view(), name="arbiter-dispute"),
    path(
        "disputes/<uuid:dispute_id>/progress.json",
        dispute_views.DisputeProgressView.as_view(),
        name="arbiter-dispute-progress",
    ),
    path(
        "disputes/<uuid:dispute_id>/publish", dispute_views.DisputePublishView.as_view(), name="arbiter-dispute-publish"
    ),
    path(
        "disputes/<uuid:dispute_id>/withdraw",
        dispute_views.DisputeWithdrawView.as_view(),
        name="arbiter-dispute-withdraw",
    ),
    path("disputes/<uuid:dispute_id>/retry", dispute_views.DisputeRetryView.as_view(), name="arbiter-dispute-retry"),
    path("disputes/requests/<uuid:request_id>", request_views.InboxRequestView.as_view(), name="arbiter-request"),
    path("owner/requests/", request_views.RequestListView.as_view(), name="owner-requests"),
    path("owner/requests/new", request_views.RequestNewView.as_view(), name="owner-request-new"),
    path("owner/requests/<uuid:request_id>", request_views.RequestDetailView.as_view(), name="owner-request"),
    path(
        "owner/requests/<uuid:request_id>/withdraw",
        request_views.RequestWithdrawView.as_view(),
        name="owner-request-withdraw",
    ),
    path("owner/stress-tests/", stress_views.StressTestListView.as_view(), name="owner-stress-tests"),
    path("owner/stress-tests/new", stress_views.StressTestNewView.as_view(), name="owner-stress-test-new"),
    path(
        "owner/stress-tests/<uuid:stress_test_id>",
        stress_views.StressTestDetailView.as_view(),
        name="owner-stress-test",
    ),
    path(
        "owner/stress-tests/<uuid:stress_test_id>/progress.json",
        stress_views.StressTestProgressView.as_view(),
        name="owner-stress-test-progress",
    ),
    path("verdicts/<uuid:verdict_id>", verdict_views.VerdictPublicView.as_view(), name="public-verdict"),
    path("verdicts/<uuid:verdict_id>/report", verdict_views.VerdictReportView.as_view(), name="public-verdict-report"),
    path(
        "verdicts/<uuid:verdict_id>/bundle.zip", verdict_views.VerdictBundleView.as_view(), name="public-verdict-bundle"
    ),
    path(
        "verdicts/<uuid:verdict_id>/plots/<str:name>.png",
        verdict_views.VerdictPlotView.as_view(),
        name="public-verdict-plot",
    ),
]
