"""`make gpu-check`: the whole GPU path in one command that fits a time budget (8 minutes on one
H100/H200), with its numbers in one JSON file and a Markdown summary.

    python -m fer_lab.gpu_check --fer2013 ../shared/data/fer2013.csv.gz
    python -m fer_lab.gpu_check --device cpu --epochs 1 dataset=synthetic ...   # dry run

Each step is the command a user runs, in its own process: a torch.profiler summary of a few
training steps of `experiment=fer_lab_best` (fer_lab/bench/profile_steps.py), which also times
the fixed start-up every command pays (imports, data, the job) up to its first batch; the bench
(free-running overhead against a plain loop, on-device vs per-sample data throughput); then
`python -m fer_lab.train experiment=fer_lab_best` for as many epochs as the budget leaves, `eval`
(ten-crop), `predict` (on photos made from test faces) and `visualize` on its checkpoint; and
trials per hour of a sweep of the recipe with `hydra.sweeper.workers=N` on the one device
against one trial at a time, with the device's use sampled (fer_lab/bench/sweep_share.py).

The budget: the epochs of training and of the sweep's trials are sized from the measured
start-up (each later command is counted as paying it again) and the measured speed, so every
step fits; a step still running when the budget is spent is stopped (its process group gets
SIGTERM) and the ones left are skipped. The report is rewritten before every step, so a check
cut off from outside keeps what it finished. A failed step is recorded with its output and the
others still run; the exit code is 1 then. Without FER2013 the built-in synthetic faces stand in.
"""

import argparse
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fer_lab.bench.report import gpu_check_summary
from fer_lab.sweeps.optuna_sweeper import WAIT_POLL_S

log = logging.getLogger("fer_lab.gpu_check")
EXPERIMENT = "experiment=fer_lab_best"
MODEL = "fer_vgg"  # the experiment's, named for the sweep's study
# Share of the budget the sweep is given when the training run is sized.
SWEEP_SHARE = 0.25
# Training epochs are counted 10% longer than the bench's speed says: checkpoints, logging.
EPOCH_MARGIN = 1.1
MIN_TRIAL_FRACTION = 0.05  # of an epoch, when not one whole epoch of every trial fits
STOP_GRACE_S = 20  # for a stopped step to close its run and exit


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fer_lab.gpu_check", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="training overrides for every step")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--fer2013", type=Path, default=None, help="FER2013 CSV; else synthetic")
    parser.add_argument("--budget-s", type=float, default=480)
    parser.add_argument("--epochs", type=int, default=None, help="default: what the budget fits")
    parser.add_argument("--batch-size", type=int, default=64, help="the recipe's")
    parser.add_argument("--profile-warmup", type=int, default=10)
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--bench-warmup", type=int, default=5)
    parser.add_argument("--bench-steps", type=int, default=200)
    parser.add_argument(
        "--sweep-trials", type=int, default=8, help="hydra.sweeper.workers, against 1"
    )
    parser.add_argument(
        "--sweep-epochs", type=int, default=None, help="default: what the budget fits"
    )
    parser.add_argument("--out", type=Path, default=Path("logs/gpu_check"))
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Costs:
    """What the budget model counts, all measured: a command's fixed cost (its start-up to the
    first batch, plus its exit), the part of it a trial pays again in a running process (data
    and job, not imports), the training speed and one training epoch with its validation."""

    fixed_s: float
    setup_s: float
    images_per_s: float
    epoch_s: float


def epoch_seconds(images_per_s: float, sizes: dict[str, int]) -> float:
    """A training epoch and its validation at the bench's speed (validation at three times the
    training rate, as it has no backward pass)."""
    return sizes["train"] / images_per_s + sizes["val"] / (3 * images_per_s)


def training_epochs(seconds_left: float, costs: Costs, sizes: dict[str, int], budget: float) -> int:
    """Epochs of the training run that fit what is left once the start-ups of it, eval, predict
    and visualize, its test split, eval's ten crops of it and the sweep's share are counted."""
    test_s = sizes["test"] / (3 * costs.images_per_s)
    sweep_s = max(SWEEP_SHARE * budget, sweep_fixed(costs))
    reserved = 4 * costs.fixed_s + test_s + 10 * test_s + sweep_s
    epochs = math.floor((seconds_left - reserved) / (costs.epoch_s * EPOCH_MARGIN))
    return max(1, min(100, epochs))


def sweep_fixed(costs: Costs) -> float:
    """The sweep's cost before any epoch: two commands' start-ups, each trial's data and job
    (two one after the other, then two rounds of the parallel workers), the workers' polling."""
    return 2 * costs.fixed_s + 4 * costs.setup_s + 2 * WAIT_POLL_S


def smallest_searched_batch() -> int:
    """The smallest data.batch_size conf/hparams_search/optuna.yaml searches."""
    text = (resources.files("fer_lab.conf") / "hparams_search" / "optuna.yaml").read_text()
    (choices,) = re.findall(r"data\.batch_size:\s*choice\(([^)]*)\)", text)
    return min(int(value) for value in choices.split(","))


def sweep_size(
    seconds_left: float, costs: Costs, workers: int, batch_size: int
) -> tuple[int, float | None] | None:
    """(epochs, fraction of each epoch or None) of the sweep's trials that fit, counted as if
    the device ran the 2 + 2 x workers trials one after another (no gain from sharing it), at
    the search space's smallest batch size; None when not even a sliver of an epoch fits."""
    trial_epoch_s = costs.epoch_s * max(1.0, batch_size / smallest_searched_batch())
    epochs = (seconds_left - sweep_fixed(costs)) / ((2 + 2 * workers) * trial_epoch_s)
    if epochs >= 1:
        return min(10, math.floor(epochs)), None
    if epochs >= MIN_TRIAL_FRACTION:
        return 1, math.floor(epochs * 100) / 100
    return None


def write_report(report: dict[str, Any], out: Path) -> None:
    """gpu_check.json and .md as they stand: rewritten before every step and at the end, so a
    check stopped by a time limit still leaves the steps it finished."""
    report["total_s"] = time.perf_counter() - report["started"]
    shown = {key: value for key, value in report.items() if key not in ("started", "deadline")}
    (out / "gpu_check.json").write_text(json.dumps(shown, indent=2))
    (out / "gpu_check.md").write_text(gpu_check_summary(shown, EXPERIMENT))


def stop_group(process: subprocess.Popen) -> str:
    """SIGTERM to the step's whole process group (a sweep's workers too), SIGKILL if it has
    not exited within STOP_GRACE_S; returns what it printed."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.communicate(timeout=STOP_GRACE_S)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0]


def skip_step(name: str, command: list[str], report: dict[str, Any], reason: str) -> None:
    report["steps"][name] = {"command": " ".join(command), "seconds": 0.0, "exit_code": None}
    report["steps"][name]["skipped"] = reason
    log.error("%s skipped: %s", name, reason)


def run_step(name: str, command: list[str], report: dict[str, Any], cwd: Path) -> bool:
    """Run one fer_lab command in `cwd` until the budget's deadline; its wall time, exit code
    and (on failure) output tail go into `report["steps"]`. The report files there are first
    brought up to date. Once the budget is spent, the step is recorded as skipped."""
    write_report(report, cwd)
    left = report["deadline"] - time.perf_counter()
    if left <= 0:
        skip_step(name, command, report, "the budget was spent")
        return False
    step: dict[str, Any] = {"command": " ".join(command), "seconds": 0.0, "exit_code": None}
    report["steps"][name] = step
    log.info("%s: %s", name, step["command"])
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output = process.communicate(timeout=left)[0]
    except subprocess.TimeoutExpired:
        output = stop_group(process)
        step["stopped"] = f"still running when the budget was spent ({left:.0f} s left at start)"
    step["seconds"] = time.perf_counter() - started
    step["exit_code"] = process.returncode
    if process.returncode != 0:
        step["output_tail"] = output[-4000:]
        log.error("%s failed (exit %d):\n%s", name, process.returncode, step["output_tail"])
    return process.returncode == 0


def data_overrides(args: argparse.Namespace) -> list[str]:
    if args.fer2013 is not None and args.fer2013.is_file():
        return [f"dataset.path={args.fer2013.resolve()}"]
    log.warning("No FER2013 file (--fer2013): the synthetic faces stand in")
    return ["dataset=synthetic"]


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


def profile(args: argparse.Namespace, common: list[str], report: dict, out: Path) -> None:
    """The profiler step, first: its start-up is what every later command is counted to pay."""
    profile_json = out / "profile.json"
    command = ["fer_lab.bench.profile_steps", *common, "--device", args.device]
    command += ["--warmup", str(args.profile_warmup), "--steps", str(args.profile_steps)]
    command += ["--json", str(profile_json), "--trace", str(out / "profile_trace.json")]
    if run_step("profile", [*command, "--launched-at", str(time.time())], report, out):
        report["profile"] = json.loads(profile_json.read_text())


def measured_costs(report: dict, sizes: dict[str, int]) -> Costs | None:
    """The budget model's inputs from the profile and bench steps; None if either failed."""
    rows = report.get("bench", {}).get("training", [])
    if "profile" not in report or not rows:
        return None
    measured = report["profile"]
    fixed = report["steps"]["profile"]["seconds"] - measured["loop_s"]
    setup = measured["startup_s"] - measured["import_s"]
    rate = rows[0]["fer_lab_images_per_s"]
    return Costs(fixed, setup, rate, epoch_seconds(rate, sizes))


def sweep(
    args: argparse.Namespace, overrides: list[str], report: dict, out: Path, costs: Costs | None
) -> None:
    """workers=N against workers=1, sized to what is left of the budget: counted at the
    training run's own epoch time where it measured one."""
    trial = [*overrides]
    epochs, fraction = args.sweep_epochs, None
    if epochs is None:
        command = ["fer_lab.bench.sweep_share", *trial]
        if costs is None:
            skip_step("sweep", command, report, "not sized: the profile or the bench failed")
            return
        epochs_per_s = report.get("train", {}).get("epochs_per_s_between_validations")
        if epochs_per_s:
            costs = Costs(costs.fixed_s, costs.setup_s, costs.images_per_s, 1 / epochs_per_s)
        left = report["deadline"] - time.perf_counter()
        size = sweep_size(left, costs, args.sweep_trials, args.batch_size)
        if size is None:
            reason = f"{left:.0f} s left, {sweep_fixed(costs):.0f} s of start-ups to pay first"
            skip_step("sweep", command, report, reason)
            return
        epochs, fraction = size
    if fraction is not None and not any("limit_train_batches" in o for o in overrides):
        trial += [f"++trainer.limit_train_batches={fraction}"]
        trial += [f"++trainer.limit_val_batches={fraction}"]
    report["budget"]["sweep"] = {"epochs": epochs, "fraction_of_each_epoch": fraction}
    with tempfile.TemporaryDirectory(prefix="fer_lab_gpu_check_") as workdir:
        sweep_json = out / "sweep_share.json"
        command = ["fer_lab.bench.sweep_share", *trial, "--model", MODEL]
        command += ["--workers", str(args.sweep_trials), "--epochs", str(epochs)]
        command += ["--json", str(sweep_json), "--workdir", workdir]
        run_step("sweep", command, report, out)
        if sweep_json.is_file():  # what it finished, also when stopped
            report["sweep"] = json.loads(sweep_json.read_text())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = arguments(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from fer_lab.tracking.provenance import describe_hardware

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to torch (--device cpu: dry run)")
    started = time.perf_counter()
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
        "started": started,
        "deadline": started + args.budget_s,
    }
    common = [EXPERIMENT, trainer, *overrides, f"data.batch_size={args.batch_size}"]
    sizes = write_photos(common, out / "photos")
    report["dataset_sizes"] = sizes

    profile(args, common, report, out)
    bench_json = out / "bench.json"
    # Training overrides first: they are the bench's positional arguments.
    bench = ["fer_lab.bench", EXPERIMENT, *overrides, "--device", args.device, "--timing", "free"]
    bench += ["--models", MODEL, "--batch-size", str(args.batch_size), "--json", str(bench_json)]
    bench += ["--warmup", str(args.bench_warmup), "--steps", str(args.bench_steps)]
    bench += ["--sections", "training", "pipelines"]
    if run_step("bench", bench, report, out):
        report["bench"] = json.loads(bench_json.read_text())

    costs = measured_costs(report, sizes)
    epochs = args.epochs
    if epochs is None:
        left = report["deadline"] - time.perf_counter()
        epochs = 1 if costs is None else training_epochs(left, costs, sizes, args.budget_s)
    report["budget"] = {"costs": costs and asdict(costs), "train_epochs": epochs}

    run_dir = out / "train"
    train = ["fer_lab.train", *common, f"trainer.max_epochs={epochs}", f"hydra.run.dir={run_dir}"]
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

    sweep(args, [EXPERIMENT, trainer, *overrides], report, out, costs)
    write_report(report, out)
    print((out / "gpu_check.md").read_text())
    print(f"JSON: {out / 'gpu_check.json'}\nMarkdown: {out / 'gpu_check.md'}")
    return 0 if all(step["exit_code"] == 0 for step in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
