"""The owner's pages (server-rendered) and sign-up."""

from django.urls import path, re_path
from django.views.generic import RedirectView

from ownership import views

urlpatterns = [
    path("accounts/signup/", views.SignupView.as_view(), name="signup"),
    path("owner/", RedirectView.as_view(pattern_name="owner-models"), name="owner-home"),
    path("owner/models/", views.ModelListView.as_view(), name="owner-models"),
    path("owner/models/new/", views.ModelRegisterView.as_view(), name="owner-model-register"),
    path("owner/models/<uuid:model_id>/", views.ModelDetailView.as_view(), name="owner-model"),
    path("owner/models/<uuid:model_id>/delete/", views.ModelDeleteView.as_view(), name="owner-model-delete"),
    path("owner/models/<uuid:model_id>/evidence/", views.EvidenceUploadView.as_view(), name="owner-evidence-upload"),
    path(
        "owner/models/<uuid:model_id>/evidence/generate/",
        views.WatermarkGenerateView.as_view(),
        name="owner-evidence-generate",
    ),
    path(
        "owner/models/<uuid:model_id>/evidence/<uuid:evidence_id>/",
        views.EvidenceDetailView.as_view(),
        name="owner-evidence",
    ),
    path(
        "owner/models/<uuid:model_id>/evidence/<uuid:evidence_id>/triggers.npz",
        views.EvidenceTriggersView.as_view(),
        name="owner-evidence-triggers",
    ),
    re_path(
        r"^owner/receipts/(?P<commitment>[0-9a-f]{64})\.json$",
        views.ReceiptDownloadView.as_view(),
        name="owner-receipt-download",
    ),
]
