"""The validity benchmark of the verification methods: outcome rates per suspect kind, method and claimant.

    make bench-validity                 # five seeds, panels of 20 (about 15 minutes on 2 cores)
    python -m benchmarks.validity quick # one seed, every row once: what the test suite checks
    python -m benchmarks.validity --json out.json

Besides thefts and independent models it runs adaptive false claimants (examples crafted on the
suspect, label-only claims, a thief's counter-claim, the best of many watermarks, a margin-chosen
dataset split, a family in the panel) and the verifiable flow end to end, and prints every outcome
under the rules in force beside what the old rules would have said on the same inputs.

Pure methods: no database, no broker. Exits 1 when a check fails.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from verification.methods.validity import configs_for, format_report, main_checks_pass, run_validity, summarise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("size", nargs="?", default="full", choices=["full", "quick"])
    parser.add_argument("--json", type=Path, help="also write every dispute and the summary as JSON here")
    parser.add_argument("--cache", type=Path, help="cache reference panels in this folder")
    args = parser.parse_args()
    config = configs_for([args.size])
    if args.cache:
        config = replace(config, cache_dir=args.cache)
    started = time.perf_counter()
    report = run_validity(
        config, progress=lambda line: print(f"[{time.perf_counter() - started:6.0f} s] {line}", flush=True)
    )
    summary = summarise(report)
    print()
    print(format_report(report, summary))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"records": [asdict(r) for r in report.records], "summary": summary, "seconds": report.seconds},
                indent=1,
                default=str,
            )
        )
    return 0 if main_checks_pass(summary) else 1


if __name__ == "__main__":
    sys.exit(main())
