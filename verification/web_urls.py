"""Arbiter, owner and public pages of disputes and verdicts."""

from django.urls import path

from verification import stress_views, views

urlpatterns = [
    path("disputes/", views.DisputeListView.as_view(), name="arbiter-disputes"),
    path("disputes/new", views.DisputeFileView.as_view(), name="arbiter-dispute-file"),
    path("disputes/<uuid:dispute_id>", views.DisputeDetailView.as_view(), name="arbiter-dispute"),
    path(
        "disputes/<uuid:dispute_id>/progress.json",
        views.DisputeProgressView.as_view(),
        name="arbiter-dispute-progress",
    ),
    path("disputes/<uuid:dispute_id>/publish", views.DisputePublishView.as_view(), name="arbiter-dispute-publish"),
    path("disputes/<uuid:dispute_id>/withdraw", views.DisputeWithdrawView.as_view(), name="arbiter-dispute-withdraw"),
    path("disputes/<uuid:dispute_id>/retry", views.DisputeRetryView.as_view(), name="arbiter-dispute-retry"),
    path("disputes/requests/<uuid:request_id>", views.InboxRequestView.as_view(), name="arbiter-request"),
    path("owner/requests/", views.RequestListView.as_view(), name="owner-requests"),
    path("owner/requests/new", views.RequestNewView.as_view(), name="owner-request-new"),
    path("owner/requests/<uuid:request_id>", views.RequestDetailView.as_view(), name="owner-request"),
    path(
        "owner/requests/<uuid:request_id>/withdraw", views.RequestWithdrawView.as_view(), name="owner-request-withdraw"
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
    path("verdicts/<uuid:verdict_id>", views.VerdictPublicView.as_view(), name="public-verdict"),
    path("verdicts/<uuid:verdict_id>/report", views.VerdictReportView.as_view(), name="public-verdict-report"),
    path("verdicts/<uuid:verdict_id>/bundle.zip", views.VerdictBundleView.as_view(), name="public-verdict-bundle"),
    path(
        "verdicts/<uuid:verdict_id>/plots/<str:name>.png",
        views.VerdictPlotView.as_view(),
        name="public-verdict-plot",
    ),
]
