"""Suspect adapters: one small interface over TorchScript, ONNX, in-memory and remote HTTP models.

Every adapter counts queries (samples, not requests) against an optional budget before anything is
sent, batches the queries itself, refuses malformed inputs with ``ValueError`` and turns a suspect
that fails, hangs or answers garbage into ``SuspectError`` with a sentence a person can read.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from verification.methods import egress

__all__ = [
    "HttpSuspect",
    "OnnxSuspect",
    "QueryBudgetExceeded",
    "Suspect",
    "SuspectError",
    "SuspectInput",
    "TorchModuleSuspect",
    "TorchScriptSuspect",
    "select_device",
]

SuspectInput = npt.NDArray[Any] | torch.Tensor
OutputKind = Literal["logits", "probabilities", "labels"]

# a JSON answer nested deeper than any sane tensor is hostile or broken
_MAX_JSON_DEPTH = 16


class QueryBudgetExceeded(Exception):  # noqa: N818 -- the name states the condition, like StopIteration
    """The query that would run past the suspect's budget; it was not sent."""


class SuspectError(Exception):
    """A suspect that failed, hung or answered garbage; the message is a human sentence."""


def select_device(preferred: str | torch.device | None = None) -> torch.device:
    """CUDA when available, else CPU; an explicit preference is honoured or refused, never silently changed."""
    if preferred is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preferred)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was requested but CUDA is not available on this machine")
    return device


class Suspect(ABC):
    """A model under suspicion: logits or labels for a batch of inputs, with a query counter and budget."""

    num_classes: int
    input_shape: tuple[int, ...]
    white_box: bool = False
    label_only: bool = False
    batch_size: int
    budget: int | None
    queries: int

    def __init__(self, *, num_classes: int, input_shape: Sequence[int], batch_size: int, budget: int | None) -> None:
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        shape = tuple(int(d) for d in input_shape)
        if any(d < 1 for d in shape):
            raise ValueError(f"input shape {shape} has a non-positive dimension")
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        if budget is not None and budget < 0:
            raise ValueError(f"query budget must be non-negative, got {budget}")
        self.num_classes = int(num_classes)
        self.input_shape = shape
        self.batch_size = int(batch_size)
        self.budget = budget
        self.queries = 0

    @property
    def remaining(self) -> int | None:
        """Queries left in the budget, or None when unlimited."""
        return None if self.budget is None else self.budget - self.queries

    def logits(self, x: SuspectInput) -> torch.Tensor:
        """Logits [N, C] float32 on CPU (log-probabilities for endpoints that answer probabilities)."""
        if self.label_only:
            raise SuspectError(f"{self.describe()} is label-only: it answers labels, not logits")
        batch = self._prepare_input(x)
        self._charge(batch.shape[0])
        if batch.shape[0] == 0:
            return torch.empty((0, self.num_classes), dtype=torch.float32)
        parts = []
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = batch[start : start + self.batch_size]
            parts.append(self._check_logits(self._logits_batch(chunk), chunk.shape[0]))
        return torch.cat(parts)

    def labels(self, x: SuspectInput) -> npt.NDArray[np.int64]:
        """Predicted labels [N] int64."""
        batch = self._prepare_input(x)
        self._charge(batch.shape[0])
        parts = [np.empty(0, dtype=np.int64)]
        for start in range(0, batch.shape[0], self.batch_size):
            chunk = batch[start : start + self.batch_size]
            parts.append(self._check_labels(self._labels_batch(chunk), chunk.shape[0]))
        return np.concatenate(parts)

    def module(self) -> torch.nn.Module:
        """The underlying module in eval mode on its device, for gradient methods (white-box only).

        Calls through the module are not counted against the budget: white-box access is unmetered.
        """
        raise SuspectError(f"{self.describe()} is black-box: no gradients are available")

    def describe(self) -> str:
        """A short human name for messages."""
        return type(self).__name__

    @abstractmethod
    def _logits_batch(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for one batch (already validated and counted)."""

    def _labels_batch(self, x: torch.Tensor) -> npt.NDArray[np.int64]:
        logits = self._check_logits(self._logits_batch(x), x.shape[0])
        return logits.argmax(dim=1).numpy().astype(np.int64)

    def _charge(self, n: int) -> None:
        if self.budget is not None and self.queries + n > self.budget:
            raise QueryBudgetExceeded(
                f"query budget exceeded: {self.queries} of {self.budget} queries used, {n} more requested"
            )
        self.queries += n

    def _prepare_input(self, x: SuspectInput) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            tensor = x.detach().to("cpu")
        elif isinstance(x, np.ndarray):
            if x.dtype.kind not in "fiub":
                raise ValueError(f"inputs must be numeric, got dtype {x.dtype}")
            tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        else:
            raise ValueError(f"inputs must be a numpy array or a torch tensor, got {type(x).__name__}")
        if tensor.is_complex():
            raise ValueError("inputs must be real-valued, got a complex tensor")
        tensor = tensor.to(torch.float32)
        if tensor.dim() != len(self.input_shape) + 1 or tuple(tensor.shape[1:]) != self.input_shape:
            raise ValueError(
                f"inputs must have shape [N, {', '.join(map(str, self.input_shape))}], got {list(tensor.shape)}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError("inputs contain NaN or infinite values")
        return tensor.contiguous()

    def _check_logits(self, out: object, n: int) -> torch.Tensor:
        if not isinstance(out, torch.Tensor):
            raise SuspectError(f"{self.describe()} answered a {type(out).__name__}, not a tensor of logits")
        if not out.is_floating_point():
            raise SuspectError(f"{self.describe()} answered {out.dtype} values where float logits were expected")
        if tuple(out.shape) != (n, self.num_classes):
            raise SuspectError(
                f"{self.describe()} answered shape {list(out.shape)} for {n} inputs, expected [{n}, {self.num_classes}]"
            )
        result = out.detach().to(device="cpu", dtype=torch.float32)
        if not bool(torch.isfinite(result).all()):
            raise SuspectError(f"{self.describe()} answered NaN or infinite logits")
        return result

    def _check_labels(self, labels: npt.NDArray[Any], n: int) -> npt.NDArray[np.int64]:
        if labels.shape != (n,):
            raise SuspectError(f"{self.describe()} answered {list(labels.shape)} labels for {n} inputs")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise SuspectError(f"{self.describe()} answered labels outside 0..{self.num_classes - 1}")
        return labels.astype(np.int64)


class _TorchSuspect(Suspect):
    """Shared body of the white-box adapters over a torch module."""

    white_box = True

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        device: torch.device,
        batch_size: int,
        budget: int | None,
    ) -> None:
        super().__init__(num_classes=num_classes, input_shape=input_shape, batch_size=batch_size, budget=budget)
        self.device = device
        self._module = module.to(device).eval()

    def module(self) -> torch.nn.Module:
        return self._module

    def _logits_batch(self, x: torch.Tensor) -> torch.Tensor:
        try:
            with torch.inference_mode():
                out = self._module(x.to(self.device))
        except Exception as exc:
            # the runtime's text may carry what the model chose to say: our sentence only
            raise SuspectError(f"{self.describe()} failed on a batch of {x.shape[0]} inputs") from exc
        if isinstance(out, torch.Tensor):
            return out.detach()
        raise SuspectError(f"{self.describe()} answered a {type(out).__name__}, not a tensor of logits")


class TorchScriptSuspect(_TorchSuspect):
    """A TorchScript artifact, loaded with TorchScript's own loader (never ``torch.load``); white-box."""

    def __init__(
        self,
        path: str | Path,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        device: str | torch.device | None = None,
        batch_size: int = 256,
        budget: int | None = None,
    ) -> None:
        resolved = select_device(device)
        self.path = Path(path)
        try:
            module = torch.jit.load(str(self.path), map_location=resolved)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise SuspectError("the suspect file could not be loaded as a TorchScript model") from exc
        super().__init__(
            module,
            num_classes=num_classes,
            input_shape=input_shape,
            device=resolved,
            batch_size=batch_size,
            budget=budget,
        )

    def describe(self) -> str:
        return "the TorchScript suspect"  # not its file name: the uploader chose that


class TorchModuleSuspect(_TorchSuspect):
    """An in-memory ``nn.Module`` (theft simulations, tests); white-box. The module is moved and set to eval."""

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        device: str | torch.device | None = None,
        batch_size: int = 256,
        budget: int | None = None,
    ) -> None:
        super().__init__(
            module,
            num_classes=num_classes,
            input_shape=input_shape,
            device=select_device(device),
            batch_size=batch_size,
            budget=budget,
        )


class OnnxSuspect(Suspect):
    """An ONNX artifact run by onnxruntime; black-box.

    Gradients would need the graph converted to torch (a converter such as onnx2torch would make this
    adapter white-box), but no converter is installed, so only black-box methods apply to ONNX suspects.
    """

    white_box = False

    def __init__(
        self,
        path: str | Path,
        *,
        num_classes: int,
        input_shape: Sequence[int],
        device: str | torch.device | None = None,
        batch_size: int = 256,
        budget: int | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime  # type: ignore[import-untyped]

        super().__init__(num_classes=num_classes, input_shape=input_shape, batch_size=batch_size, budget=budget)
        self.path = Path(path)
        self.device = select_device(device)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = threads
        try:
            self._session = onnxruntime.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:
            raise SuspectError("the suspect file could not be loaded as an ONNX model") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise SuspectError(f"the ONNX suspect takes {len(inputs)} inputs; exactly one is supported")
        if inputs[0].type != "tensor(float)":
            raise SuspectError("the ONNX suspect does not take a float32 tensor")
        self._input_name: str = inputs[0].name
        self._output_name: str = self._session.get_outputs()[0].name

    def describe(self) -> str:
        return "the ONNX suspect"

    def _logits_batch(self, x: torch.Tensor) -> torch.Tensor:
        try:
            (out,) = self._session.run([self._output_name], {self._input_name: x.numpy()})
        except Exception as exc:
            # the runtime's text may carry what the model chose to say: our sentence only
            raise SuspectError(f"{self.describe()} failed on a batch of {x.shape[0]} inputs") from exc
        if not isinstance(out, np.ndarray) or out.dtype.kind != "f":
            raise SuspectError(f"{self.describe()} answered something other than a float tensor")
        return torch.from_numpy(np.ascontiguousarray(out))


class _TransientHttpError(Exception):
    """A failure worth retrying: connection trouble, a timeout, a 5xx."""


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")


def _nested_numbers(value: object, what: str) -> npt.NDArray[np.float64]:
    """A regular nested list of JSON numbers as an array; anything else is a SuspectError."""
    shape: list[int] = []
    flat: list[float] = []
    leaf_depth: list[int] = []

    def walk(item: object, depth: int) -> None:
        if depth > _MAX_JSON_DEPTH:
            raise SuspectError(f"{what} is nested more than {_MAX_JSON_DEPTH} levels deep")
        if isinstance(item, list):
            if depth == len(shape):
                if leaf_depth and leaf_depth[0] <= depth:
                    raise SuspectError(f"{what} is ragged (mixes numbers and lists at one level)")
                shape.append(len(item))
            elif shape[depth] != len(item):
                raise SuspectError(f"{what} is ragged (lists of different lengths at one level)")
            for element in item:
                walk(element, depth + 1)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            if not leaf_depth:
                leaf_depth.append(depth)
            elif leaf_depth[0] != depth:
                raise SuspectError(f"{what} is ragged (numbers at different nesting levels)")
            try:
                flat.append(float(item))
            except OverflowError as exc:
                raise SuspectError(f"{what} holds a number too large for a float") from exc
        else:
            raise SuspectError(f"{what} holds a {type(item).__name__} where a number was expected")

    walk(value, 0)
    if not isinstance(value, list):
        raise SuspectError(f"{what} is a {type(value).__name__}, not a list")
    if leaf_depth and leaf_depth[0] != len(shape):
        raise SuspectError(f"{what} is ragged")
    array = np.asarray(flat, dtype=np.float64).reshape(shape)
    if not np.isfinite(array).all():
        raise SuspectError(f"{what} holds NaN or infinite values")
    return array


class HttpSuspect(Suspect):
    """A remote model over HTTP: Open Inference Protocol v2 (KServe/Triton) or a plain JSON form.

    v2: POST ``{url}/v2/models/{model_name}/infer`` with one FP32 input tensor (flattened, with its shape);
    the first output (or ``output_name``) is read with its shape. json: POST ``url`` with
    ``{"inputs": nested list}``, answered by ``{"outputs": nested list}`` or, for label-only endpoints,
    ``{"labels": [...]}``. Endpoints answering probabilities are given as log-probabilities by ``logits()``.
    Connection errors, timeouts and 5xx answers are retried with exponential backoff; 4xx are not.
    """

    white_box = False

    def __init__(
        self,
        url: str,
        *,
        protocol: Literal["v2", "json"],
        model_name: str | None = None,
        num_classes: int,
        input_shape: Sequence[int],
        timeout_s: float = 10,
        retries: int = 2,
        batch_size: int = 64,
        budget: int | None = None,
        output_kind: OutputKind = "logits",
        input_name: str = "input",
        output_name: str | None = None,
        backoff_s: float = 0.2,
        max_response_bytes: int = 64 * 1024 * 1024,
        headers: dict[str, str] | None = None,
        relay: egress.Relay | None = None,
        allowed_networks: Iterable[egress.Network] | None = None,
        resolver: egress.Resolver | None = None,
    ) -> None:
        super().__init__(num_classes=num_classes, input_shape=input_shape, batch_size=batch_size, budget=budget)
        if protocol not in ("v2", "json"):
            raise ValueError(f"protocol must be 'v2' or 'json', got {protocol!r}")
        if output_kind not in ("logits", "probabilities", "labels"):
            raise ValueError(f"output kind must be logits, probabilities or labels, got {output_kind!r}")
        self.endpoint = egress.endpoint_url(url, protocol=protocol, model_name=model_name)
        try:
            egress.parse_endpoint(self.endpoint)
        except egress.EgressError as exc:
            raise ValueError(f"suspect URL: {exc.reason}") from exc
        if timeout_s <= 0 or retries < 0 or backoff_s < 0 or max_response_bytes < 1:
            raise ValueError("timeout, retries, backoff and response cap must be positive")
        self.protocol = protocol
        self.model_name = model_name
        self.output_kind: OutputKind = output_kind
        self.label_only = output_kind == "labels"
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_response_bytes = int(max_response_bytes)
        self.input_name = input_name
        self.output_name = output_name
        self.headers = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
        self.relay = relay
        self.allowed_networks = None if allowed_networks is None else tuple(allowed_networks)
        self.resolver = resolver
        self.requests = 0

    def describe(self) -> str:
        return f"remote suspect {self.endpoint}"

    def _logits_batch(self, x: torch.Tensor) -> torch.Tensor:
        values = self._query(x)
        if values.ndim != 2 or values.shape != (x.shape[0], self.num_classes):
            raise SuspectError(
                f"{self.describe()} answered shape {list(values.shape)} for {x.shape[0]} inputs, "
                f"expected [{x.shape[0]}, {self.num_classes}]"
            )
        if self.output_kind == "probabilities":
            if values.min() < 0 or values.max() > 1 + 1e-6 or not np.allclose(values.sum(axis=1), 1, atol=1e-3):
                raise SuspectError(f"{self.describe()} answered rows that are not probability distributions")
            values = np.log(np.clip(values, 1e-45, None))
        return torch.from_numpy(values.astype(np.float32))

    def _labels_batch(self, x: torch.Tensor) -> npt.NDArray[np.int64]:
        if not self.label_only:
            return super()._labels_batch(x)
        values = self._query(x)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.shape != (x.shape[0],):
            raise SuspectError(f"{self.describe()} answered {list(values.shape)} labels for {x.shape[0]} inputs")
        if not np.all(values == np.round(values)):
            raise SuspectError(f"{self.describe()} answered labels that are not integers")
        if values.size and (values.min() < 0 or values.max() >= self.num_classes):
            raise SuspectError(f"{self.describe()} answered labels outside 0..{self.num_classes - 1}")
        return values.astype(np.int64)

    def _query(self, x: torch.Tensor) -> npt.NDArray[np.float64]:
        array = x.numpy()
        if self.protocol == "v2":
            body: dict[str, Any] = {
                "inputs": [
                    {
                        "name": self.input_name,
                        "shape": list(array.shape),
                        "datatype": "FP32",
                        "data": array.reshape(-1).tolist(),
                    }
                ]
            }
        else:
            body = {"inputs": array.tolist()}
        answer = self._post(json.dumps(body).encode())
        if not isinstance(answer, dict):
            raise SuspectError(f"{self.describe()} answered JSON that is not an object")
        return self._parse_v2(answer) if self.protocol == "v2" else self._parse_json(answer)

    def _parse_v2(self, answer: dict[str, Any]) -> npt.NDArray[np.float64]:
        outputs = answer.get("outputs")
        if not isinstance(outputs, list) or not outputs or not all(isinstance(o, dict) for o in outputs):
            raise SuspectError(f"{self.describe()} answered without a list of outputs")
        output = outputs[0]
        if self.output_name is not None:
            named = [o for o in outputs if o.get("name") == self.output_name]
            if not named:
                raise SuspectError(f"{self.describe()} answered no output named {self.output_name!r}")
            output = named[0]
        shape = output.get("shape")
        if (
            not isinstance(shape, list)
            or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise SuspectError(f"{self.describe()} answered an output without a valid shape")
        data = _nested_numbers(output.get("data"), f"the answer of {self.describe()}")
        if data.size != math.prod(shape):
            raise SuspectError(
                f"{self.describe()} answered {data.size} values for an output of shape {shape}",
            )
        return data.reshape(shape)

    def _parse_json(self, answer: dict[str, Any]) -> npt.NDArray[np.float64]:
        key = "labels" if self.label_only else "outputs"
        if key not in answer:
            raise SuspectError(f"{self.describe()} answered without {key!r}")
        return _nested_numbers(answer[key], f"the {key} of {self.describe()}")

    def _post(self, payload: bytes) -> object:
        errors: list[str] = []
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                raw = self._post_once(payload)
            except _TransientHttpError as exc:
                errors.append(str(exc))
                continue
            try:
                return json.loads(raw, parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:
                raise SuspectError(f"{self.describe()} answered something that is not valid JSON") from exc
        raise SuspectError(
            f"{self.describe()} did not answer after {self.retries + 1} attempts (last error: {errors[-1]})"
        )

    def _post_once(self, payload: bytes) -> bytes:
        self.requests += 1
        # a sandboxed run has no network: the worker's relay POSTs for it and checks the address there
        relay = self.relay if self.relay is not None else egress.installed_relay()
        try:
            if relay is not None:
                answer = egress.relay_post(relay, payload, headers=self.headers)
            else:
                answer = egress.post(
                    self.endpoint,
                    payload,
                    headers=self.headers,
                    timeout_s=self.timeout_s,
                    max_response_bytes=self.max_response_bytes,
                    allowed_networks=self.allowed_networks,
                    resolver=self.resolver,
                )
        except egress.EgressError as exc:
            if exc.transient:
                raise _TransientHttpError(exc.reason) from exc
            raise SuspectError(f"{self.describe()} could not be queried: {exc.reason}") from exc
        # only the status number is repeated: reason phrases and error bodies are the endpoint's words
        if answer.status >= 500:
            raise _TransientHttpError(f"HTTP {answer.status}")
        if not 200 <= answer.status < 300:
            raise SuspectError(f"{self.describe()} refused the query with HTTP {answer.status}")
        if len(answer.body) > self.max_response_bytes:
            raise SuspectError(f"{self.describe()} answered more than the {self.max_response_bytes}-byte cap")
        return answer.body
