from django.urls import path

from timestamps import api

urlpatterns = [
    path("keys/", api.KeyListApi.as_view(), name="keys"),
    path("log/checkpoint", api.CheckpointApi.as_view(), name="log-checkpoint"),
    path("log/key", api.LogKeyApi.as_view(), name="log-key"),
    path("log/entries/<int:index>", api.LogEntryApi.as_view(), name="log-entry"),
    path("log/proof/inclusion", api.InclusionProofApi.as_view(), name="log-inclusion-proof"),
    path("log/proof/consistency", api.ConsistencyProofApi.as_view(), name="log-consistency-proof"),
]
