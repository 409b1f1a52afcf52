"""Hostile model artifacts, built at test time (nothing here is committed as a model file).

Each builder returns the bytes of a TorchScript or ONNX artifact for the digits interface
(input `[batch, 64]`, 10 class scores) that does one thing an attacker would try. TorchScript has
`torch.from_file`, which maps any path the process can open (read, or with `shared=True` create and
write), `print` (stdout) and `warnings.warn` (stderr); it has no socket, process or exec builtins.
What TorchScript cannot reach is tried by `tests.security.escapes`, run through the sandbox as "model
code that achieved arbitrary Python".

Every message an attack raises or prints starts with MARKER, so a test can tell the model's own words
from ours.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import torch
from torch import nn

MARKER = "zz-hostile"
CLASSES = 10
FEATURES = 64


def _script(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module.eval()), buffer)
    return buffer.getvalue()


class _Model(nn.Module):
    """The digits interface: a linear head from 64 features to 10 scores (TorchScript reads no module globals)."""

    def __init__(self) -> None:
        super().__init__()
        self.classes = CLASSES
        self.head = nn.Linear(FEATURES, CLASSES)


class _Readout(_Model):
    """Maps `size` bytes of `path` (as a model can) and turns them into text."""

    def __init__(self, path: str, size: int) -> None:
        super().__init__()
        self.path = path
        self.size = size

    def read(self) -> str:
        data = torch.from_file(self.path, shared=False, size=self.size, dtype=torch.uint8)
        text = ""
        for i in range(self.size):
            text += chr(int(data[i].item()))
        return text


class ReadAndRaise(_Readout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("zz-hostile " + self.read())


class ReadAndPrint(_Readout):
    """Prints what it read to stdout and stderr, then fails (so the child's output tail gets reported) or answers."""

    def __init__(self, path: str, size: int, fail: bool) -> None:
        super().__init__(path, size)
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        text = self.read()
        print("zz-hostile " + text)
        warnings.warn("zz-hostile " + text)  # noqa: B028 (TorchScript: stderr, no caller frames)
        if self.fail:
            raise RuntimeError("zz-hostile stopped")
        return self.head(x.flatten(1))


class ReadIntoScores(_Readout):
    """Behaves on a batch of zeros (what registration checks); on any other input answers the bytes as scores."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        if bool((flat == 0).all()):
            return self.head(flat)
        data = torch.from_file(self.path, shared=False, size=self.size, dtype=torch.uint8)
        rows = (self.size + self.classes - 1) // self.classes
        padded = torch.zeros(rows * self.classes, dtype=torch.float32)
        padded[: self.size] = data.to(torch.float32)
        scores = padded.reshape(rows, self.classes)
        return scores.repeat((flat.shape[0] + rows - 1) // rows, 1)[: flat.shape[0]]


class WriteFile(_Model):
    """Creates or overwrites each path with its payload through a shared mapping, then answers like a classifier."""

    def __init__(self, targets: list[tuple[str, bytes]]) -> None:
        super().__init__()
        self.paths = [path for path, _ in targets]
        self.payloads = [list(payload) for _, payload in targets]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.head(x.flatten(1))
        for i in range(len(self.paths)):
            payload = self.payloads[i]
            data = torch.from_file(self.paths[i], shared=True, size=len(payload), dtype=torch.uint8)
            data.copy_(torch.tensor(payload, dtype=torch.uint8))
            # the mapping is used: TorchScript would otherwise drop the write as dead code
            scores = scores + data[0].to(torch.float32) * 0.0
        return scores


class Spin(_Model):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = x.sum()
        while bool(total >= 0):  # a batch of anything: never ends
            total = total + 1
        return x.flatten(1)[:, : self.classes]


class Hog(_Model):
    """Asks for twice the address space each time, up to 4 TiB, until an allocation fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = 1 << 24
        total = 0
        while size <= 1 << 40:
            total += torch.empty(size).numel()  # the answer depends on it: TorchScript keeps the allocation
            size *= 2
        return x.flatten(1)[:, : self.classes] + float(total) * 0.0


class Answers(_Model):
    """Well-formed in shape but not in value, or the wrong shape or type: `kind` says which."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        if self.kind == "says":  # no secret: words of its own, for whoever reads the failure
            raise RuntimeError("zz-hostile: the claimant forged this evidence\nTraceback: <a href=//evil>details</a>")
        if self.kind == "nan":
            return flat[:, : self.classes] * float("nan")
        if self.kind == "inf":
            return flat[:, : self.classes] + float("inf")
        if self.kind == "too_few_classes":
            return flat[:, :3]
        if self.kind == "batch_dropped":
            return flat[:1, : self.classes]
        return flat[:, : self.classes]


def benign() -> bytes:
    torch.manual_seed(0)
    return _script(nn.Sequential(nn.Flatten(), nn.Linear(FEATURES, CLASSES)))


def read_and_raise(path: str, size: int) -> bytes:
    return _script(ReadAndRaise(path, size))


def read_and_print(path: str, size: int, *, fail: bool) -> bytes:
    return _script(ReadAndPrint(path, size, fail))


def read_into_scores(path: str, size: int) -> bytes:
    return _script(ReadIntoScores(path, size))


def write_files(*targets: tuple[str, bytes]) -> bytes:
    return _script(WriteFile(list(targets)))


def spin() -> bytes:
    return _script(Spin())


def hog() -> bytes:
    return _script(Hog())


def answers(kind: str) -> bytes:
    return _script(Answers(kind))


# ONNX: no operator reads or writes files, opens sockets or runs programs; what is expressible is an
# external-data reference to any path, runaway loops and allocations, and bad answers.


def _onnx(nodes: list[Any], initializers: list[Any], output_dims: list[Any], dtype: int | None = None) -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", dtype or TensorProto.FLOAT, output_dims)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def onnx_external_data(path: str, size: int) -> bytes:
    """Weights "stored" in an external file: any path, e.g. a key (onnxruntime would read it)."""
    from onnx import TensorProto, helper

    weights = TensorProto(name="weights", data_type=TensorProto.UINT8, dims=[size])
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", path), ("offset", "0"), ("length", str(size))):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    slice_ = [
        helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0]),
        helper.make_tensor("ends", TensorProto.INT64, [2], [1 << 30, CLASSES]),
    ]
    nodes = [helper.make_node("Slice", ["input", "starts", "ends"], ["logits"])]
    return _onnx(nodes, [weights, *slice_], ["batch", CLASSES])


def onnx_answers(kind: str) -> bytes:
    """`nan`: NaN scores; `too_few_classes`: [batch, 3]."""
    from onnx import TensorProto, helper

    width = 3 if kind == "too_few_classes" else CLASSES
    inits = [
        helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0]),
        helper.make_tensor("ends", TensorProto.INT64, [2], [1 << 30, width]),
        helper.make_tensor("nan", TensorProto.FLOAT, [], [float("nan")]),
    ]
    nodes = [helper.make_node("Slice", ["input", "starts", "ends"], ["sliced"])]
    if kind == "nan":
        nodes.append(helper.make_node("Mul", ["sliced", "nan"], ["logits"]))
    else:
        nodes.append(helper.make_node("Identity", ["sliced"], ["logits"]))
    return _onnx(nodes, inits, ["batch", width])


def onnx_hog() -> bytes:
    """A ConstantOfShape of 2^40 floats."""
    from onnx import TensorProto, helper

    inits = [
        helper.make_tensor("shape", TensorProto.INT64, [1], [1 << 40]),
        helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0]),
        helper.make_tensor("ends", TensorProto.INT64, [2], [1 << 30, CLASSES]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
    ]
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["huge"]),
        helper.make_node("ReduceSum", ["huge"], ["total"], keepdims=0),
        helper.make_node("Slice", ["input", "starts", "ends"], ["sliced"]),
        helper.make_node("Add", ["sliced", "total"], ["logits"]),
    ]
    return _onnx(nodes, inits, ["batch", CLASSES])


def onnx_spin() -> bytes:
    """A Loop of 2^62 iterations."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])],
    )
    inits = [
        helper.make_tensor("trips", TensorProto.INT64, [], [1 << 62]),
        helper.make_tensor("keep", TensorProto.BOOL, [], [True]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("starts", TensorProto.INT64, [2], [0, 0]),
        helper.make_tensor("ends", TensorProto.INT64, [2], [1 << 30, CLASSES]),
    ]
    nodes = [
        helper.make_node("Loop", ["trips", "keep", "zero"], ["spun"], body=body),
        helper.make_node("Slice", ["input", "starts", "ends"], ["sliced"]),
        helper.make_node("Add", ["sliced", "spun"], ["logits"]),
    ]
    return _onnx(nodes, inits, ["batch", CLASSES])


# Run in the sandbox child.


def sandboxed_scores(path: str, inputs: Any) -> Any:
    """The scores a TorchScript artifact answers for `inputs` inside the sandbox (what the methods would see)."""
    module = torch.jit.load(path, map_location="cpu")  # type: ignore[no-untyped-call]
    with torch.inference_mode():
        return module(torch.as_tensor(inputs)).numpy()
