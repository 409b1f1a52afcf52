"""Reference panels: independent models of a task, trained on public data, that set the null hypothesis.

A panel's members differ in architecture, seed and training subset, and none of them sees the
owner's data. Their agreement with a claimed label set gives p0 for the agreement test and feeds
the false-claim screen. A panel is cached as TorchScript files plus a JSON manifest; its hash
(SHA-256 over the canonical manifest, which lists every member's file digest) goes into verdicts.
Loading checks every file against the manifest before TorchScript's own loader opens it.

Members take inputs in the panel's native shape; a panel may also declare other layouts of the same
elements that it accepts (``accepted_input_shapes`` in the manifest, e.g. ``[8, 8]`` and ``[1, 8, 8]``
for 64 digit features), and :meth:`ReferencePanel.labels` reshapes such queries to the native shape.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from verification.methods.datasets import TaskData
from verification.methods.panel_shapes import ACCEPTED_KEY, PanelInterface, parse_shapes
from verification.methods.training import ARCHITECTURES, Architecture, accuracy, build_model, train_classifier

__all__ = [
    "PANEL_FORMAT",
    "PanelError",
    "PanelMember",
    "ReferencePanel",
    "load_or_train_panel",
    "panel_directory",
    "train_panel",
]

PANEL_FORMAT = "modelcourt-panel-v1"
# the panel mixes these so that p0 reflects architectures a suspect might have
DEFAULT_ARCHITECTURES: tuple[Architecture, ...] = ("mlp", "wide_mlp", "deep_mlp", "linear", "cnn")


class PanelError(Exception):
    """A cached panel that is missing, altered or made for other parameters."""


@dataclass(frozen=True)
class PanelMember:
    """One reference model: how it was made, its file digest and its accuracy on the holdout split."""

    name: str
    arch: str
    seed: int
    train_size: int
    holdout_accuracy: float
    sha256: str = ""


@dataclass
class ReferencePanel:
    """Independent models of one task, with their provenance."""

    task: str
    num_classes: int
    input_shape: tuple[int, ...]
    params: dict[str, Any]
    members: list[PanelMember]
    modules: list[nn.Module]
    # other layouts of the native shape's elements that the panel serves (the native shape always is)
    accepted_shapes: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        try:
            self.input_shape, self.accepted_shapes = parse_shapes(list(self.input_shape), self.accepted_shapes)
        except ValueError as exc:
            raise PanelError(str(exc)) from exc

    def __len__(self) -> int:
        return len(self.modules)

    def interface(self, name: str | None = None) -> PanelInterface:
        """What the panel serves, under ``name`` (default: its task's name)."""
        return PanelInterface(
            name=name or self.task,
            task=self.task,
            num_classes=self.num_classes,
            input_shape=self.input_shape,
            accepted_shapes=self.accepted_shapes,
            size=len(self),
        )

    def labels(self, x: npt.ArrayLike | torch.Tensor) -> npt.NDArray[np.int64]:
        """Every member's labels for ``x`` (in any accepted layout): an array ``[members, N]``."""
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        array = np.asarray(x, dtype=np.float32)
        out = np.empty((len(self.modules), len(array)), dtype=np.int64)
        if not len(array):
            return out
        try:
            inputs = torch.as_tensor(self.interface().to_native(array))
        except ValueError as exc:
            raise PanelError(str(exc)) from exc
        with torch.inference_mode():
            for i, module in enumerate(self.modules):
                out[i] = module(inputs).argmax(dim=1).cpu().numpy()
        return out

    def manifest(self) -> dict[str, Any]:
        """The JSON-safe description of the panel that its hash covers."""
        manifest = {
            "format": PANEL_FORMAT,
            "task": self.task,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "params": self.params,
            "members": [asdict(m) for m in self.members],
        }
        # only a panel that serves other layouts says so: the hash of a native-only panel stays what it was
        if len(self.accepted_shapes) > 1:
            manifest[ACCEPTED_KEY] = [list(s) for s in self.accepted_shapes[1:]]
        return manifest

    @property
    def hash(self) -> str:
        """SHA-256 of the canonical manifest (sorted keys, no whitespace)."""
        if any(not m.sha256 for m in self.members):
            raise PanelError("the panel has not been saved, so its members have no file digests yet")
        blob = json.dumps(self.manifest(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()

    def save(self, directory: str | Path) -> str:
        """Write every member as TorchScript and the manifest; returns the panel hash."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        example = torch.zeros((1, *self.input_shape))
        members = []
        for member, module in zip(self.members, self.modules, strict=True):
            path = target / f"{member.name}.pt"
            traced = torch.jit.trace(module.eval(), example)  # type: ignore[no-untyped-call]
            tmp = path.with_suffix(".tmp")
            traced.save(str(tmp))
            os.replace(tmp, path)
            members.append(PanelMember(**{**asdict(member), "sha256": _file_sha256(path)}))
        self.members = members
        # the manifest goes last: a crash half-way leaves no manifest that points at missing files
        return self._write_manifest(target)

    def _write_manifest(self, target: Path) -> str:
        # one temporary name per process: two workers bringing the same cached panel up to date do not collide
        manifest_tmp = target / f"manifest.json.{os.getpid()}.tmp"
        manifest_tmp.write_text(json.dumps(self.manifest(), indent=2, sort_keys=True))
        os.replace(manifest_tmp, target / "manifest.json")
        return self.hash

    @classmethod
    def load(cls, directory: str | Path) -> ReferencePanel:
        """Read a saved panel, refusing any member whose file digest differs from the manifest."""
        source = Path(directory)
        try:
            manifest = json.loads((source / "manifest.json").read_text())
        except (OSError, ValueError) as exc:
            raise PanelError(f"no readable panel manifest in {source}: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != PANEL_FORMAT:
            raise PanelError(f"{source} holds no {PANEL_FORMAT} manifest")
        try:
            members = [PanelMember(**m) for m in manifest["members"]]
            accepted = manifest.get(ACCEPTED_KEY) or []
        except (KeyError, TypeError) as exc:
            raise PanelError(f"the panel manifest in {source} does not list its members plainly") from exc
        if not isinstance(accepted, list):
            raise PanelError(f"the panel manifest in {source} lists no accepted input shapes")
        modules = []
        for member in members:
            path = source / f"{member.name}.pt"
            if not path.is_file() or _file_sha256(path) != member.sha256:
                raise PanelError(f"panel member {member.name} in {source} is missing or altered")
            modules.append(torch.jit.load(str(path), map_location="cpu").eval())  # type: ignore[no-untyped-call]
        return cls(
            task=manifest["task"],
            num_classes=int(manifest["num_classes"]),
            input_shape=tuple(manifest["input_shape"]),
            params=manifest["params"],
            members=members,
            modules=modules,
            accepted_shapes=tuple(tuple(s) if isinstance(s, list) else s for s in accepted),
        )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def train_panel(
    task: TaskData,
    *,
    size: int = 20,
    seed: int = 0,
    architectures: Sequence[Architecture] = DEFAULT_ARCHITECTURES,
    subset_fraction: float = 0.6,
    epochs: int = 60,
    name_prefix: str = "ref",
    accepted_shapes: Sequence[tuple[int, ...]] = (),
) -> ReferencePanel:
    """Train ``size`` independent models on random subsets of the public split (never the owner's data).

    Member i has architecture ``architectures[i % len]``, its own weight seed and its own subset of
    ``subset_fraction`` of the public split, with light input noise. Models made with the same
    recipe and other seeds are exchangeable with the panel: that is what the rank p-value needs.
    ``accepted_shapes`` are the other layouts of the task's features that the panel serves.
    """
    if size < 1:
        raise ValueError(f"a panel needs at least one member, got {size}")
    if not 0.0 < subset_fraction <= 1.0:
        raise ValueError(f"subset_fraction must lie in (0, 1], got {subset_fraction}")
    unknown = [a for a in architectures if a not in ARCHITECTURES]
    if not architectures or unknown:
        raise ValueError(f"architectures must be a non-empty subset of {ARCHITECTURES}, got {list(architectures)}")
    members, modules = [], []
    n_train = max(task.num_classes, round(len(task.public_x) * subset_fraction))
    for i in range(size):
        arch = architectures[i % len(architectures)]
        member_seed = int(np.random.default_rng([seed, i, 0xBA7E]).integers(2**31))
        rng = np.random.default_rng(member_seed)
        idx = rng.choice(len(task.public_x), size=n_train, replace=False)
        model = build_model(arch, input_shape=task.input_shape, num_classes=task.num_classes, seed=member_seed)
        train_classifier(
            model, task.public_x[idx], task.public_y[idx], epochs=epochs, seed=member_seed, input_noise=0.05
        )
        members.append(
            PanelMember(
                name=f"{name_prefix}-{i:03d}-{arch}",
                arch=arch,
                seed=member_seed,
                train_size=n_train,
                holdout_accuracy=round(accuracy(model, task.holdout_x, task.holdout_y), 4),
            )
        )
        modules.append(model)
    params = {
        "size": size,
        "seed": seed,
        "architectures": list(architectures),
        "subset_fraction": subset_fraction,
        "epochs": epochs,
        "task_digest": task.digest,
        "torch": torch.__version__.split("+")[0],
    }
    return ReferencePanel(
        task=task.name,
        num_classes=task.num_classes,
        input_shape=task.input_shape,
        params=params,
        members=members,
        modules=modules,
        accepted_shapes=tuple(accepted_shapes),
    )


def panel_directory(task: TaskData, cache_dir: str | Path, *, size: int = 20, seed: int = 0) -> Path:
    """Where :func:`load_or_train_panel` keeps the panel for (task, size, seed)."""
    return Path(cache_dir) / f"{task.name}-{task.digest[:12]}-n{size}-s{seed}"


def load_or_train_panel(
    task: TaskData,
    cache_dir: str | Path,
    *,
    size: int = 20,
    seed: int = 0,
    accepted_shapes: Sequence[tuple[int, ...]] = (),
) -> ReferencePanel:
    """The cached panel for (task, size, seed) when it is intact, else a freshly trained and saved one.

    A cached panel that declares other ``accepted_shapes`` than asked (one saved before its task's layouts
    were declared) keeps its members and gets a new manifest: what it serves is not a reason to retrain.
    """
    directory = panel_directory(task, cache_dir, size=size, seed=seed)
    if (directory / "manifest.json").exists():
        try:
            panel = ReferencePanel.load(directory)
        except PanelError:
            pass  # altered or half-written: train again below
        else:
            if (panel.params.get("size"), panel.params.get("seed"), panel.params.get("task_digest")) == (
                size,
                seed,
                task.digest,
            ):
                wanted = parse_shapes(list(panel.input_shape), accepted_shapes)[1]
                if panel.accepted_shapes != wanted:
                    panel.accepted_shapes = wanted
                    panel._write_manifest(directory)
                return panel
    panel = train_panel(task, size=size, seed=seed, accepted_shapes=accepted_shapes)
    panel.save(directory)
    return panel
