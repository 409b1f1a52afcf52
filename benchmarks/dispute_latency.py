"""Time from filing to verdict for a 40-trigger watermark dispute, phase by phase, beside bare inference.

    python -m benchmarks.dispute_latency            # embedded SQLite, a throw-away database

The run is called the way the gpu worker calls it (no broker here, so no queue wait: the integration
test with a real worker records that). The baseline is the same 40 queries on the same TorchScript
file, loaded and answered in this process with no sandbox, receipts or signature.

Each dispute runs four ways, interleaved, in the same run: *cold* (no spare: every sandbox child
imports torch itself), *warm* (the run finds a spare sandbox child that finished its imports, as a
worker that has been up a while holds one; the wait for it is not counted), *back to back* (the
spare is started as the filing returns, possibly still importing) and *warm, unconfined*: warm with
the sandbox's kernel layers off (`MODELCOURT_SANDBOX_LAYERS=rlimits`), which prices Landlock,
seccomp and the network namespace against the same run without them.
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("MODELCOURT_DATA_DIR", tempfile.mkdtemp(prefix="modelcourt-bench-"))
os.environ.setdefault("OMP_NUM_THREADS", "1")

import django

django.setup()

import io  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.files.uploadedfile import SimpleUploadedFile  # noqa: E402
from django.db import connection  # noqa: E402

from modelcourt.embed import embed_watermark  # noqa: E402
from ownership import services as ownership_services  # noqa: E402
from ownership.roles import Role, role_grant  # noqa: E402
from verification.methods.datasets import digits_task  # noqa: E402
from verification.methods.panels import train_panel  # noqa: E402
from verification.methods.thefts import fine_tune  # noqa: E402
from verification.methods.training import build_model, train_classifier  # noqa: E402
from verification.services import disputes as dispute_services  # noqa: E402
from workers.sandbox import discard_spares, warm_spare  # noqa: E402

REPEATS = 3


def _bytes(module: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(module.eval(), torch.zeros(1, 64)), buffer)
    return buffer.getvalue()


def main() -> None:
    torch.set_num_threads(1)
    if connection.vendor == "sqlite":
        connection.settings_dict["TEST"]["NAME"] = os.path.join(os.environ["MODELCOURT_DATA_DIR"], "bench.sqlite3")
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        task = digits_task(0)
        train_panel(task, size=20, seed=0).save(Path(settings.DATA_DIR) / "panels" / "installed" / "bench")
        user = get_user_model().objects.create_user(username="bench", password="x")  # noqa: S106
        role_grant(user=user, role=Role.OWNER)
        role_grant(user=user, role=Role.ARBITER)
        base = train_classifier(
            build_model("mlp", input_shape=(64,), num_classes=10, seed=1), task.owner_x, task.owner_y
        )
        model = ownership_services.model_register(
            owner=user, name="digits", task="digits", input_shape=[64], num_classes=10,
            artifact=SimpleUploadedFile("digits.pt", _bytes(base)),
        )  # fmt: skip
        _, arrays = ownership_services.evidence_generate(model=model, count=40)
        embed_watermark(base, train_inputs=task.owner_x, train_labels=task.owner_y,
                        trigger_inputs=arrays["inputs"], trigger_labels=arrays["labels"], epochs=15)  # fmt: skip
        stolen = _bytes(fine_tune(base, task.public_x, task.public_y, seed=2))

        modes: dict[str, list[dict[str, float]]] = {"cold": [], "warm": [], "back to back": [], "unconfined": []}
        layers = os.environ.get("MODELCOURT_SANDBOX_LAYERS", "landlock,seccomp,netns,rlimits")
        for i in range(REPEATS):
            for mode, runs in modes.items():
                os.environ["MODELCOURT_SANDBOX_PREWARM"] = "0" if mode == "cold" else "1"
                os.environ["MODELCOURT_SANDBOX_LAYERS"] = "rlimits" if mode == "unconfined" else layers
                discard_spares()
                if mode != "cold":
                    assert warm_spare(wait_s=120), "the spare did not warm up"
                started = time.perf_counter()
                dispute = dispute_services.dispute_file(
                    arbiter=user, title=f"bench {mode} {i}", claimant_model=model, methods=["watermark"],
                    suspect_file=SimpleUploadedFile("suspect.pt", stolen), panel="bench",
                )  # fmt: skip
                filing = time.perf_counter() - started
                if mode in ("warm", "unconfined"):
                    assert warm_spare(wait_s=120), "the spare did not warm up"
                started = time.perf_counter()
                verdict = dispute_services.verification_run_execute(dispute_id=dispute.pk)
                assert verdict is not None, "no verdict"
                total = filing + time.perf_counter() - started
                runs.append({"filing (upload stored, no sandbox)": filing, **verdict.run.timings, "total": total})
        discard_spares()

        path = Path(settings.DATA_DIR) / "bare.pt"
        path.write_bytes(stolen)
        bare_load, bare_query = [], []
        for _ in range(REPEATS):
            start = time.perf_counter()
            module = torch.jit.load(str(path))
            loaded = time.perf_counter()
            with torch.inference_mode():
                module(torch.as_tensor(arrays["inputs"])).argmax(1)
            bare_load.append(loaded - start)
            bare_query.append(time.perf_counter() - loaded)

        print(f"40-trigger watermark dispute, fine-tuned suspect, panel of 20, {REPEATS} runs (median), 1 thread")
        print(f"outcome: {verdict.outcome}\n")
        print(f"  {'':<52} {'cold':>9}    {'warm':>9}    cold/warm  {'unconfined':>10}  warm/unconfined")
        keys = [
            ("filing (upload stored, no sandbox)", "filing: the upload stored and sniffed, no sandbox"),
            ("open_evidence_s", "open escrow, check commitment, receipt, proofs"),
            ("panel_s", "find the reference panel"),
            ("sandbox_s", "sandbox child, in all"),
            ("child_panel_load_s", "  child: load and check the panel"),
            ("child_model_load_s", "  child: load the suspect"),
            ("child_agreement_queries_s", "  child: 40 queries + panel + screen"),
            ("sign_s", "plots, report, DSSE signature"),
            ("total", "filing to verdict (timestamp and log included)"),
        ]
        medians = {
            mode: {key: statistics.median([r[key] for r in runs if key in r]) for key, _ in keys if runs[0].get(key)}
            for mode, runs in modes.items()
        }
        cold, warm, bare_sandbox = medians["cold"], medians["warm"], medians["unconfined"]
        for key, label in keys:
            if key in cold and key in warm:
                ratio = f"{cold[key] / warm[key]:8.1f}x" if warm[key] > 0 else f"{'':9}"
                unconfined = bare_sandbox.get(key, 0.0)
                cost = f"{warm[key] / unconfined:8.2f}x" if unconfined > 0 else ""
                print(
                    f"  {label:<52} {cold[key] * 1e3:9.1f} ms {warm[key] * 1e3:9.1f} ms {ratio} "
                    f"{unconfined * 1e3:9.1f} ms {cost}"
                )
        together = medians["back to back"]["total"]
        print(
            f"  {'filing to verdict, back to back in one process':<52} {'':>12} {together * 1e3:9.1f} ms "
            f"{cold['total'] / together:8.1f}x"
        )
        bare = statistics.median(bare_load) + statistics.median(bare_query)
        print(
            f"\n  baseline: bare load {statistics.median(bare_load) * 1e3:.1f} ms + 40 queries "
            f"{statistics.median(bare_query) * 1e3:.2f} ms = {bare * 1e3:.1f} ms"
        )
        print(
            f"  filing to verdict / bare inference: cold {cold['total'] / bare:.0f}x, warm {warm['total'] / bare:.0f}x"
        )
    finally:
        from timestamps import dbtriggers

        dbtriggers.uninstall(connection)
        connection.creation.destroy_test_db(old_name, verbosity=0)


if __name__ == "__main__":
    main()
