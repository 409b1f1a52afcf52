"""The validity benchmark of the verification methods: outcome rates per suspect kind and method.

    make bench-validity                 # five seeds, panels of 20 (about 15-20 minutes on 2 cores)
    python -m benchmarks.validity quick # one seed, what the test suite checks
    python -m benchmarks.validity --json out.json

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
