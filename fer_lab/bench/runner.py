"""`python -m fer_lab.bench`: what fer_lab costs on top of a hand-written PyTorch loop.

    python -m fer_lab.bench --models tf_emotion_cnn convnet5 dataset.path=fer2013.csv.gz
    python -m fer_lab.bench --device cuda --models convnet5 --sweep 1 2 4 dataset.path=...

Positional arguments are training overrides (`key=value`, as for `python -m fer_lab.train`).
One process measures, interleaved: the dataset's load time (first parse and cached), the
training loader's throughput for both data pipelines with and without augmentation, and per
model the images per second and peak memory of fer_lab's training path and of a plain loop
over the same model and in-memory tensors, with their ratio. `--timing` picks how the two are
timed (fer_lab/bench/overhead.py): `lockstep`, step for step in one fit, which a shared CPU's drift
needs (the default on a CPU), or `free`, each side running alone with the device synced only
at the ends, as a GPU trains (the default with `--device cuda`). Prints a table and writes
JSON. A benchmark run on a shared machine varies: compare ratios taken in one run, not across
runs.
"""

import argparse
import json
import logging
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from fer_lab.bench.end_to_end import compare_end_to_end
from fer_lab.bench.host_overhead import measure_host_overhead
from fer_lab.bench.overhead import compare_training, compare_training_free
from fer_lab.bench.report import report
from fer_lab.bench.sweep_rate import SCHEDULES, trials_per_hour
from fer_lab.bench.throughput import bench_config, pipeline_throughput, timed
from fer_lab.tracking.provenance import describe_hardware

log = logging.getLogger("fer_lab.bench")
PIPELINES = ("per_sample", "on_device")
SECTIONS = ("loading", "pipelines", "training", "host", "end_to_end")
TIMINGS = {"lockstep": compare_training, "free": compare_training_free}


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fer_lab.bench", description=__doc__)
    parser.add_argument("overrides", nargs="*", help="training overrides, e.g. dataset.path=...")
    parser.add_argument("--models", nargs="+", default=["tf_emotion_cnn", "convnet5"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument(
        "--steps",
        type=lambda text: None if text == "epoch" else int(text),
        default=None,
        help="timed training steps (default: the rest of one epoch, so that the epoch-end "
        "checkpoints and logging weigh as much as in training)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="fits per model")
    parser.add_argument(
        "--end-to-end-models",
        nargs="+",
        default=["tf_emotion_cnn"],
        help="models of the end-to-end section (each pair of runs takes minutes)",
    )
    parser.add_argument(
        "--end-to-end-pairs",
        type=int,
        default=3,
        help="alternating CLI / plain-script runs of the end-to-end section",
    )
    parser.add_argument(
        "--end-to-end-epochs", type=int, default=2, help="epochs of each end-to-end run"
    )
    parser.add_argument(
        "--timing",
        choices=TIMINGS,
        default=None,
        help="lockstep: fer_lab and the plain loop step for step in one fit, steady on a noisy "
        "CPU; free: each side alone, the device synced only where the clock starts and stops, "
        "so the host runs ahead as on a GPU (default: free with --device cuda, else lockstep)",
    )
    parser.add_argument(
        "--host-steps", type=int, default=1000, help="timed steps of the host-overhead section"
    )
    parser.add_argument(
        "--host-warmup",
        type=int,
        default=48,
        help="untimed steps before the host-overhead section's timed ones (and steps counted)",
    )
    parser.add_argument(
        "--host-repeats", type=int, default=3, help="alternating fer_lab/plain pairs per value"
    )
    parser.add_argument(
        "--host-steps-per-call",
        type=int,
        nargs="+",
        default=[1, 8],
        help="speed.steps_per_call values of the host-overhead section",
    )
    parser.add_argument("--augmentation", default="strong", help="for the pipeline figures")
    parser.add_argument("--pipeline-batches", type=int, default=40)
    parser.add_argument(
        "--sweep",
        type=int,
        nargs="*",
        default=[],
        metavar="TRIALS_AT_ONCE",
        help="trials per hour of an Optuna sweep with this many trials at once, e.g. 1 2 4",
    )
    parser.add_argument(
        "--sweep-schedules", nargs="+", choices=list(SCHEDULES), default=list(SCHEDULES)
    )
    parser.add_argument("--sweep-model", default="convnet5")
    parser.add_argument("--sweep-epochs", type=int, default=10)
    parser.add_argument(
        "--sections",
        nargs="*",
        choices=SECTIONS,
        default=list(SECTIONS),
        help="what to measure besides the sweep, which --sweep adds",
    )
    parser.add_argument("--json", type=Path, default=Path("logs/bench/bench.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temp folder")
    args = parser.parse_args(argv)
    args.timing = args.timing or ("free" if args.device == "cuda" else "lockstep")
    return args


def base_overrides(args: argparse.Namespace, workdir: Path) -> list[str]:
    trainer = "gpu" if args.device == "cuda" else "cpu"
    return [
        f"trainer={trainer}",
        f"data.batch_size={args.batch_size}",
        f"logger.tracking_uri=sqlite:///{workdir}/mlflow.db",
        *args.overrides,
    ]


def measure_loading(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    cfg = bench_config(base_overrides(args, workdir), workdir / "load")
    result: dict[str, Any] = {"dataset": cfg.names.dataset}
    with open_dict(cfg):
        if "cache_dir" in cfg.dataset:
            cfg.dataset.cache_dir = str(workdir / "cache")
    source = instantiate(cfg.dataset)
    result["load_first_s"] = timed(source.load)
    result["load_cached_s"] = timed(source.load) if "cache_dir" in cfg.dataset else None
    return result


def attach_device(datamodule: Any, device: str) -> None:
    """The datamodule reads its device from its trainer, as in training."""
    datamodule.trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, logger=False
    )


def measure_pipelines(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows, splits = [], None
    for augmentation in ("none", args.augmentation):
        for pipeline in PIPELINES:
            overrides = [f"augmentation={augmentation}", f"data.pipeline={pipeline}"]
            cfg = bench_config([*base_overrides(args, workdir), *overrides], workdir / "data")
            datamodule = instantiate(cfg.data)
            datamodule.splits = splits
            attach_device(datamodule, args.device)
            datamodule.setup()
            splits = datamodule.splits
            rate = pipeline_throughput(datamodule, args.pipeline_batches)
            workers = cfg.data.num_workers if pipeline == "per_sample" else 0
            rows.append(
                {
                    "pipeline": pipeline,
                    "augmentation": augmentation,
                    "workers": workers,
                    "images_per_s": rate,
                }
            )
    return rows


def measure_training(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """Per model, `--repeats` fits, each timing fer_lab and the plain loop with `--timing`
    (fer_lab/bench/overhead.py); the median speed and the highest peak memory over the fits are
    reported."""
    compare = TIMINGS[args.timing]
    results = []
    for model in args.models:
        overrides = [*base_overrides(args, workdir), f"model={model}", "data.pipeline=on_device"]
        rounds = [
            compare(bench_config(overrides, workdir / model / str(round_)), args.warmup, args.steps)
            for round_ in range(args.repeats)
        ]
        fer_lab = [a.images_per_s for a, _ in rounds]
        plain = [b.images_per_s for _, b in rounds]
        results.append(
            {
                "model": model,
                "timing": args.timing,
                "fer_lab_timed_steps": rounds[0][0].steps,
                "plain_timed_steps": rounds[0][1].steps,
                "fer_lab_images_per_s": statistics.median(fer_lab),
                "plain_images_per_s": statistics.median(plain),
                "ratio_plain_over_fer_lab": statistics.median(
                    b / a for a, b in zip(fer_lab, plain, strict=True)
                ),
                "fer_lab_rounds": fer_lab,
                "plain_rounds": plain,
                "fer_lab_peak_memory_mb": max(a.peak_memory_mb for a, _ in rounds),
                "plain_peak_memory_mb": max(b.peak_memory_mb for _, b in rounds),
            }
        )
        log.info(
            "%s: plain/fer_lab per fit %s",
            model,
            [f"{b / a:.3f}" for a, b in zip(fer_lab, plain, strict=True)],
        )
    return results


def measure_host(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """The host work fer_lab adds to a step (fer_lab/bench/host_overhead.py), per
    speed.steps_per_call value."""
    overrides = [o for o in base_overrides(args, workdir) if not o.startswith("data.batch_size")]
    return [
        measure_host_overhead(
            overrides,
            workdir,
            per_call,
            steps=args.host_steps,
            warmup=args.host_warmup,
            counted=args.host_warmup,
            repeats=args.host_repeats,
        )
        for per_call in args.host_steps_per_call
    ]


def measure_end_to_end(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """Per model, the whole CLI process against the plain script (fer_lab/bench/end_to_end.py),
    with the CLI's defaults for everything the bench does not set."""
    return [
        compare_end_to_end(
            [
                *base_overrides(args, workdir),
                f"model={model}",
                f"trainer.max_epochs={args.end_to_end_epochs}",
            ],
            args.end_to_end_pairs,
            workdir / "end_to_end" / model,
        )
        for model in args.end_to_end_models
    ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = arguments(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to torch")
    with tempfile.TemporaryDirectory(prefix="fer_lab_bench_") as temp:
        workdir = args.workdir or Path(temp)
        result: dict[str, Any] = {
            "hardware": describe_hardware(),
            "device": args.device,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "settings": {k: str(v) for k, v in vars(args).items()},
        }
        # Training first: the other sections leave loader processes and a fragmented heap
        # behind, which slowed fer_lab's side of the next fits more than the plain one's
        # (tf_emotion_cnn: 1.067 after them, 1.014 alone).
        measures = {
            "training": measure_training,
            "host": measure_host,
            "end_to_end": measure_end_to_end,
            "pipelines": measure_pipelines,
            "loading": measure_loading,
        }
        for section, measure in measures.items():
            if section in args.sections:
                result[section] = measure(args, workdir)
        if args.sweep:
            sweep_overrides = base_overrides(args, workdir)
            result["sweep"] = [
                trials_per_hour(
                    sweep_overrides,
                    args.sweep_model,
                    args.sweep_epochs,
                    concurrent,
                    workdir,
                    schedule,
                )
                for concurrent in args.sweep
                for schedule in args.sweep_schedules
            ]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(report(result))
    print(f"\nJSON: {args.json}")
    return result


if __name__ == "__main__":
    main()
