import mimetypes

from django.apps import AppConfig


class OwnershipConfig(AppConfig):
    name = "ownership"
    verbose_name = "Ownership registry"

    def ready(self) -> None:
        # the host's MIME table may map .pt to a game console's page table; artifacts are plain bytes
        for suffix in (".pt", ".pth", ".ts", ".onnx", ".npz"):
            mimetypes.add_type("application/octet-stream", suffix)
