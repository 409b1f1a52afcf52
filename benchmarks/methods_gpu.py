"""The verification methods on the GPU: each figure beside the same work on the CPU, in the same run.

    python -m benchmarks.methods_gpu            # needs CUDA; prints a table

Measures MinGD distances (fp32, and bf16 autocast), Blind Walk label queries and the agreement test's
label queries, on digits-shaped inputs. The CPU baseline uses one thread, as the workers do.
"""

# ruff: noqa: B023 -- every closure below is called at once, inside its own loop iteration
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from verification.methods.dataset_inference import blind_walk, dataset_inference_test, mingd_distances
from verification.methods.datasets import digits_task, synthetic_task
from verification.methods.suspects import TorchModuleSuspect
from verification.methods.training import build_model, train_classifier


def timed(fn: Callable[[], object], device: torch.device, repeat: int = 3) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls after one warm-up, synchronising CUDA around each."""
    result = fn()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 1
    torch.set_num_threads(1)
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    task = digits_task(0)
    model = train_classifier(build_model("mlp", input_shape=(64,), num_classes=10, seed=0), task.owner_x, task.owner_y)
    x_all = np.concatenate([task.owner_x, task.public_x, task.holdout_x])
    rows = []

    for n in (100, 1797):
        x = x_all[:n]
        on_cpu = model.to(cpu)
        t_cpu, d_cpu = timed(lambda: mingd_distances(on_cpu, x, num_classes=10), cpu, repeat=1)
        on_gpu = model.to(gpu)
        t_gpu, d_gpu = timed(lambda: mingd_distances(on_gpu, x, num_classes=10), gpu)

        def bf16() -> object:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return mingd_distances(on_gpu, x, num_classes=10)

        t_bf, d_bf = timed(bf16, gpu)
        diff = float(np.abs(np.asarray(d_gpu) - np.asarray(d_cpu)).max())
        diff_bf = float(np.abs(np.asarray(d_bf) - np.asarray(d_cpu)).mean())
        rows.append((f"MinGD, {n} samples x 3 norms x 10 classes, fp32", t_cpu, t_gpu, f"max |cuda-cpu| {diff:.1e}"))
        rows.append((f"MinGD, {n} samples, bf16 autocast", t_cpu, t_bf, f"mean |bf16-cpu| {diff_bf:.2e}"))
        model = model.to(cpu)

    for n in (100, 1000):
        x = x_all[:n]
        sus_cpu = TorchModuleSuspect(model, num_classes=10, input_shape=(64,), device="cpu", batch_size=4096)
        t_cpu, r_cpu = timed(lambda: blind_walk(sus_cpu, x, seed=1), cpu, repeat=1)
        sus_gpu = TorchModuleSuspect(model, num_classes=10, input_shape=(64,), device="cuda", batch_size=65536)
        t_gpu, r_gpu = timed(lambda: blind_walk(sus_gpu, x, seed=1), gpu)
        same = bool(np.array_equal(r_cpu.distances, r_gpu.distances))  # type: ignore[attr-defined]
        rows.append((f"Blind Walk, {n} samples x 30 directions", t_cpu, t_gpu, f"identical distances: {same}"))
        model = model.to(cpu)

    triggers = np.random.default_rng(0).uniform(size=(100_000, 64)).astype(np.float32)
    sus_cpu = TorchModuleSuspect(model, num_classes=10, input_shape=(64,), device="cpu", batch_size=4096)
    t_cpu, l_cpu = timed(lambda: sus_cpu.labels(triggers), cpu, repeat=1)
    sus_gpu = TorchModuleSuspect(model, num_classes=10, input_shape=(64,), device="cuda", batch_size=65536)
    t_gpu, l_gpu = timed(lambda: sus_gpu.labels(triggers), gpu)
    rows.append(
        ("agreement test labels, 100,000 queries", t_cpu, t_gpu, f"same labels: {np.array_equal(l_cpu, l_gpu)}")
    )
    model = model.to(cpu)

    syn = synthetic_task(0)
    owner = train_classifier(
        build_model("wide_mlp", input_shape=(64,), num_classes=10, seed=1), syn.owner_x, syn.owner_y, epochs=150
    )
    results = {}
    for device in (cpu, gpu):
        owner = owner.to(device)
        suspect = TorchModuleSuspect(owner, num_classes=10, input_shape=(64,), device=device)
        start = time.perf_counter()
        test = dataset_inference_test(
            claimant=owner,
            suspect=suspect,
            private_x=syn.owner_x,
            public_x=syn.holdout_x[:500],
            num_classes=10,
            split_seed=0,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        results[device.type] = (time.perf_counter() - start, test.p_value)
    rows.append(
        (
            "dataset inference test (MinGD), 500+500 samples, copy",
            results["cpu"][0],
            results["cuda"][0],
            f"p cpu {results['cpu'][1]:.2g}, cuda {results['cuda'][1]:.2g}",
        )
    )

    print(f"\n{'work':<58} {'cpu 1 thread':>13} {'cuda':>10} {'speedup':>8}  check")
    for name, t_cpu, t_gpu, note in rows:
        print(f"{name:<58} {t_cpu:>12.3f}s {t_gpu:>9.4f}s {t_cpu / t_gpu:>7.1f}x  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
