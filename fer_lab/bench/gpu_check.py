"""`make gpu-check`: the whole GPU path in one command that fits a time budget (8 minutes on one
H100/H200), with its numbers in one JSON file and a Markdown summary.

    python -m fer_lab.gpu_check --fer2013 ../shared/data/fer2013.csv.gz
    python -m fer_lab.gpu_check --device cpu --epochs 1 dataset=synthetic ...   # dry run

Each step is the command a user runs, in its own process: the bench (free-running overhead of
`experiment=fer_lab_best` against a plain loop, on-device vs per-sample data throughput), then
`python -m fer_lab.train experiment=fer_lab_best` for as many epochs as the budget leaves (sized
from the bench's speed), `eval` (ten-crop), `predict` (on photos made from test faces) and
`visualize` on the checkpoint it made, and trials per hour of a sweep with 4 trials at once.
A failed step is recorded with its output and the others still run; the exit code is 1 then.
Without FER2013 the built-in synthetic faces stand in.
"""

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fer_lab.bench.report import gpu_check_summary

log = logging.getLogger("fer_lab.gpu_check")
EXPERIMENT = "experiment=fer_lab_best"
# Seconds of each budget spent outside training: bench, eval/predict/visualize, the sweep.
SHARES = {"bench": 0.15, "inference": 0.12, "sweep": 0.2}
STARTUP_S = 25  # imports, data load and the test split around a training run's epochs


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fer_lab.gpu_check", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="training overrides for every step")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--fer2013", type=Path, default=None, help="FER2013 CSV; else synthetic")
    parser.add_argument("--budget-s", type=float, default=480)
    parser.add_argument("--epochs", type=int, default=None, help="default: what the budget fits")
    parser.add_argument("--batch-size", type=int, default=64, help="the recipe's")
    parser.add_argument("--bench-warmup", type=int, default=5)
    parser.add_argument("--bench-steps", type=int, default=200)
    parser.add_argument("--sweep-trials", type=int, default=4, help="trials at once")
    parser.add_argument("--sweep-epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("logs/gpu_check"))
    return parser.parse_args(argv)


def write_report(report: dict[str, Any], out: Path) -> None:
    """gpu_check.json and .md as they stand: rewritten before every step and at the end, so a
    check stopped by a time limit still leaves the steps it finished."""
    report["total_s"] = time.perf_counter() - report["started"]
    shown = {key: value for key, value in report.items() if key != "started"}
    (out / "gpu_check.json").write_text(json.dumps(shown, indent=2))
    (out / "gpu_check.md").write_text(gpu_check_summary(shown, EXPERIMENT))


def run_step(name: str, command: list[str], report: dict[str, Any], cwd: Path) -> bool:
    """Run one fer_lab command in `cwd`; its wall time, exit code and (on failure) output tail
    go into `report["steps"]`. The report files there are first brought up to date."""
    write_report(report, cwd)
    log.info("%s: %s", name, " ".join(command))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", *command], cwd=cwd, capture_output=True, text=True, check=False
    )
    step = {"command": " ".join(command), "seconds": time.perf_counter() - started}
    step["exit_code"] = done.returncode
    if done.returncode != 0:
        step["output_tail"] = (done.stdout + done.stderr)[-4000:]
        log.error("%s failed (exit %d):\n%s", name, done.returncode, step["output_tail"])
    report["steps"][name] = step
    return done.returncode == 0


def data_overrides(args: argparse.Namespace) -> list[str]:
    if args.fer2013 is not None and args.fer2013.is_file():
        return [f"dataset.path={args.fer2013.resolve()}"]
    log.warning("No FER2013 file (--fer2013): the synthetic faces stand in")
    return ["dataset=synthetic"]


def training_epochs(args: argparse.Namespace, images_per_s: float | None, sizes: dict) -> int:
    """Epochs that fit the training share of the budget at the bench's speed (validation at
    three times the training rate, as it has no backward pass)."""
    if args.epochs is not None:
        return args.epochs
    if not images_per_s:
        return 1
    epoch_s = sizes["train"] / images_per_s + sizes["val"] / (3 * images_per_s)
    seconds = args.budget_s * (1 - sum(SHARES.values())) - STARTUP_S
    return max(1, min(100, math.floor(seconds / epoch_s)))


def write_photos(overrides: list[str], folder: Path, count: int = 6) -> dict[str, int]:
    """Test faces upscaled onto larger grey canvases, as ordinary photos for `predict`; returns
    the dataset's split sizes."""
    import cv2
    from hydra.utils import instantiate

    from fer_lab.bench.throughput import bench_config

    cfg = bench_config(overrides, folder / "config")
    splits = instantiate(cfg.dataset).load()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(min(count, len(splits.test.labels))):
        face = splits.test.images[index]
        face = cv2.imread(str(face), cv2.IMREAD_GRAYSCALE) if isinstance(face, Path) else face
        canvas = cv2.copyMakeBorder(
            cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC),
            *(64,) * 4,
            cv2.BORDER_CONSTANT,
            value=128,
        )
        cv2.imwrite(str(folder / f"photo_{index}.png"), canvas)
    return {split: len(getattr(splits, split).labels) for split in ("train", "val", "test")}


def training_run(store: str) -> dict[str, Any]:
    """Accuracies and epochs per second of the one training run in `store`."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, "tags.experiment = 'fer_lab_best'")
    run = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    history = sorted(m.timestamp for m in client.get_metric_history(run.info.run_id, "val/acc"))
    epochs = len(history)
    steady = (epochs - 1) / ((history[-1] - history[0]) / 1000) if epochs > 1 else None
    metrics = run.data.metrics
    return {
        "epochs": epochs,
        "epochs_per_s_between_validations": steady,
        "val_acc_best": metrics.get("val/acc_best"),
        "test_acc": metrics.get("test/acc"),
        "eval_test_tencrop_acc": metrics.get("eval/test/tencrop/acc"),
        "run_id": run.info.run_id,
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = arguments(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from fer_lab.tracking.provenance import describe_hardware

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to torch (--device cpu: dry run)")
    trainer = "trainer=gpu" if args.device == "cuda" else "trainer=cpu"
    store = f"sqlite:///{out / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = store  # every step logs into the check's own store
    overrides = [*data_overrides(args), *args.overrides]
    report: dict[str, Any] = {
        "hardware": describe_hardware(),
        "device": args.device,
        "torch": torch.__version__,
        "data": "fer2013" if overrides[0].startswith("dataset.path") else "synthetic",
        "budget_s": args.budget_s,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "steps": {},
        "started": time.perf_counter(),
    }
    sizes = write_photos([EXPERIMENT, trainer, *overrides], out / "photos")
    report["dataset_sizes"] = sizes

    bench_json = out / "bench.json"
    # Training overrides first: they are the bench's positional arguments.
    bench = ["fer_lab.bench", EXPERIMENT, *overrides, "--device", args.device, "--timing", "free"]
    bench += [
        "--models",
        "fer_vgg",
        "--batch-size",
        str(args.batch_size),
        "--json",
        str(bench_json),
    ]
    bench += ["--warmup", str(args.bench_warmup), "--steps", str(args.bench_steps)]
    bench += ["--sections", "training", "pipelines"]
    if run_step("bench", bench, report, out):
        report["bench"] = json.loads(bench_json.read_text())
    rows = report.get("bench", {}).get("training", [])
    epochs = training_epochs(args, rows[0]["fer_lab_images_per_s"] if rows else None, sizes)

    run_dir = out / "train"
    train = ["fer_lab.train", EXPERIMENT, trainer, *overrides, f"trainer.max_epochs={epochs}"]
    train.append(f"data.batch_size={args.batch_size}")
    train.append(f"hydra.run.dir={run_dir}")
    if run_step("train", train, report, out):
        (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
        checkpoint = f"ckpt_path={best}"
        run_step("eval", ["fer_lab.eval", checkpoint, "tta=tencrop", "device=auto"], report, out)
        predictions = out / "predictions.csv"
        predict = ["fer_lab.predict", checkpoint, f"images={out / 'photos'}", "device=auto"]
        predict += [f"output={predictions}", f"annotate_dir={out / 'annotated'}"]
        if run_step("predict", predict, report, out):
            rows = predictions.read_text().splitlines()[1:]
            faces = sum(1 for row in rows if row.split(",")[1] != "-1")
            report["predict"] = {"photos": len(list((out / "photos").glob("*.png")))}
            report["predict"]["faces"] = faces
        pictures = out / "visualize"
        visualize = ["fer_lab.visualize", checkpoint, f"output_dir={pictures}"]
        if run_step("visualize", visualize, report, out):
            report["visualize"] = {"pngs": len(list(pictures.glob("*.png")))}
        report["train"] = training_run(store)
        seconds = report["steps"]["train"]["seconds"]
        report["train"]["epochs_per_s_whole_command"] = report["train"]["epochs"] / seconds

    with tempfile.TemporaryDirectory(prefix="fer_lab_gpu_check_") as workdir:
        sweep_json = out / "sweep.json"
        sweep = ["fer_lab.bench", *overrides, "--device", args.device, "--json", str(sweep_json)]
        sweep += ["--sweep", str(args.sweep_trials), "--sweep-epochs", str(args.sweep_epochs)]
        sweep += ["--sweep-schedules", "workers"]
        sweep += ["--workdir", workdir, "--sections"]
        if run_step("sweep", sweep, report, out):
            report["sweep"] = json.loads(sweep_json.read_text())["sweep"]

    write_report(report, out)
    print((out / "gpu_check.md").read_text())
    print(f"JSON: {out / 'gpu_check.json'}\nMarkdown: {out / 'gpu_check.md'}")
    return 0 if all(step["exit_code"] == 0 for step in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
