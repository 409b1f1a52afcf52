"""Tiny real model artifacts for registry tests (made on the fly, never committed)."""

from pathlib import Path

import torch
from torch import nn


def digits_mlp(seed: int = 0) -> nn.Module:
    """An untrained 64 -> 10 MLP (the digits task's interface)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def torchscript_file(path: Path, module: nn.Module | None = None) -> Path:
    """Save a scripted module."""
    torch.jit.script(module or digits_mlp()).save(str(path))
    return path


def onnx_file(path: Path, module: nn.Module | None = None, input_shape: tuple[int, ...] = (1, 8, 8)) -> Path:
    """Export to ONNX with a dynamic batch axis."""
    torch.onnx.export(
        module or digits_mlp(),
        (torch.zeros(1, *input_shape),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    return path


def fifty_megabyte_torchscript_file(path: Path) -> Path:
    """A digits-interface MLP of about 12.5 M float32 parameters: a 50 MB artifact."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(64, 3500), nn.ReLU(), nn.Linear(3500, 3500), nn.ReLU(), nn.Linear(3500, 10))
    return torchscript_file(path, nn.Sequential(nn.Flatten(), body).eval())
