"""`python -m fer_lab.bench.sweep_share`: how well one GPU serves many trials at once. Trials per
hour of an Optuna sweep with `hydra.sweeper.workers=N` against one trial at a time (workers=1),
each sweep's machine use sampled while it runs (fer_lab/bench/device_usage.py).

    python -m fer_lab.bench.sweep_share experiment=fer_lab_best trainer=gpu \\
        --model fer_vgg --workers 8 --epochs 2 --json sweep_share.json

Each sweep runs 2 x its workers trials (fer_lab/bench/sweep_rate.py: pruning off, start-up
included). The JSON is rewritten after each sweep, so a stopped run keeps the ones it finished.
"""

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from fer_lab.bench.device_usage import UsageSampler
from fer_lab.bench.sweep_rate import trials_per_hour


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fer_lab.bench.sweep_share")
    parser.add_argument("overrides", nargs="*", help="training overrides of every trial")
    parser.add_argument("--model", required=True, help="the trials' model (the study's name)")
    parser.add_argument("--workers", type=int, default=8, help="trials at once, against 1")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    args = parser.parse_args(argv)
    if args.workers < 2:
        parser.error("--workers must be at least 2 (it is compared with one at a time)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    result: dict[str, Any] = {"rows": [], "speedup": None}
    with tempfile.TemporaryDirectory(prefix="fer_lab_sweep_share_") as temp:
        workdir = args.workdir or Path(temp)
        for workers in (1, args.workers):
            with UsageSampler() as usage:
                row = trials_per_hour(args.overrides, args.model, args.epochs, workers, workdir)
            result["rows"].append({**row, "usage": usage.summary()})
            if workers > 1:
                one, many = result["rows"]
                result["speedup"] = many["trials_per_hour"] / one["trials_per_hour"]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
