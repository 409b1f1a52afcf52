"""Time a trivial sandboxed call, cold and through a warm spare, with every layer and with rlimits only.

.venv/bin/python benchmarks/sandbox_layers.py [repeats]
"""

import os
import statistics
import sys
import time

from workers import confinement, sandbox


def _time_calls(repeats: int, *, warm: bool) -> list[float]:
    times = []
    for _ in range(repeats):
        if warm:
            assert sandbox.warm_spare(wait_s=120)
        started = time.perf_counter()
        sandbox.run_sandboxed(sandbox.child_pid, timeout_s=60, memory_bytes=4 << 30, prewarm=warm)
        times.append(time.perf_counter() - started)
    sandbox.discard_spares()
    return times


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    for layers in (",".join(confinement.LAYERS), "rlimits"):
        os.environ[confinement.LAYERS_ENV] = layers
        name = confinement.policy_record()["name"]
        for warm in (False, True):
            times = _time_calls(repeats, warm=warm)
            how = "warm spare" if warm else "cold child"
            print(
                f"{name:60s} {how}: median {statistics.median(times) * 1000:7.1f} ms "
                f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}, n={repeats})"
            )


if __name__ == "__main__":
    main()
