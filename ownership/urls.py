from django.urls import path

from ownership import api

urlpatterns = [
    path("models/", api.ModelListApi.as_view(), name="model-list"),
    path("models/<uuid:model_id>", api.ModelDetailApi.as_view(), name="model-detail"),
    path("models/<uuid:model_id>/artifact", api.ModelArtifactApi.as_view(), name="model-artifact"),
    path("models/<uuid:model_id>/evidence/", api.EvidenceListApi.as_view(), name="evidence-list"),
    path("models/<uuid:model_id>/evidence/generate", api.EvidenceGenerateApi.as_view(), name="evidence-generate"),
    path("models/<uuid:model_id>/evidence/adopt", api.EvidenceAdoptApi.as_view(), name="evidence-adopt"),
    path(
        "models/<uuid:model_id>/evidence/<uuid:evidence_id>/opening",
        api.EvidenceOpeningApi.as_view(),
        name="evidence-opening",
    ),
    path("models/<uuid:model_id>/guard/", api.GuardSummaryApi.as_view(), name="guard-summary"),
    path("models/<uuid:model_id>/guard/alarms/", api.GuardAlarmListApi.as_view(), name="guard-alarms"),
    path("receipts/<str:commitment>", api.ReceiptApi.as_view(), name="receipt"),
]
