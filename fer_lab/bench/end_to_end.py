"""The whole `python -m fer_lab.train` process against a hand-written script, by the clock.

Each side runs as its own process, start-up to exit: fer_lab's CLI (config, data from the
parse cache, training, validation, checkpoints, MLflow logging, the test and the artifacts)
and `fer_lab.bench.plain_script` (the same network, optimiser, batch size, epochs and data
cache, with a validation pass each epoch, the best weights saved and scored on the test split).
The plain script keeps torch's default NCHW layout, as one written by hand would; fer_lab's
`speed.channels_last` (default true) is reported beside the ratio, and
`speed.channels_last=false` compares like with like.
The two alternate, the side going first swapping each pair, and the ratio is taken per pair,
so the drift of a shared machine between pairs cancels out; the median pair is reported.
The plain script runs with the glibc allocator settings fer_lab's commands set for themselves
(fer_lab/core/process.py): without them its big tensors page-fault in again every step, and
fer_lab would win by that alone.
"""

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fer_lab.bench.throughput import bench_config
from fer_lab.core.process import same_allocator_env
from fer_lab.data import FaceSplits

log = logging.getLogger("fer_lab.bench")


# What the plain script copies; the CLI run must be configured like it (`plain_spec` checks).
PLAIN_RECIPE = {
    "data.channels": 1,
    "optimizer._target_": "torch.optim.Adam",
    "scheduler.scheduler": None,
    "augmentation.train": [],
    "preprocess._target_": "albumentations.ToFloat",
    "preprocess.max_value": 255,
    "loss._target_": "fer_lab.training.losses.CrossEntropyLoss",
    "loss.label_smoothing": 0.0,
    "loss.max_class_weight": None,
}


def plain_spec(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """What the plain script needs to train what `cfg` trains, or a ValueError naming each
    setting it cannot copy."""
    unlike = [
        f"{key}={OmegaConf.select(cfg, key)!r} (the plain script does {want!r})"
        for key, want in PLAIN_RECIPE.items()
        if _plain(OmegaConf.select(cfg, key)) != want
    ]
    if unlike:
        raise ValueError("end-to-end bench: the plain script cannot copy " + "; ".join(unlike))
    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "data": str(output_dir / "faces.npz"),
        "model_target": model.pop("_target_"),
        "model_kwargs": model,
        "lr": cfg.optimizer.lr,
        "weight_decay": cfg.optimizer.weight_decay,
        "batch_size": cfg.data.batch_size,
        "epochs": cfg.trainer.max_epochs,
        "seed": cfg.seed,
        "output_dir": str(output_dir),
    }


def write_faces(splits: FaceSplits, image_size: int, path: Path) -> None:
    """The plain script's data: each split's uint8 images and labels, uncompressed. It cannot
    read files or resize, so the dataset must be in memory at the model's input size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split in ("train", "val", "test"):
        faces = getattr(splits, split)
        if not isinstance(faces.images, np.ndarray) or faces.images.shape[1:] != (
            image_size,
            image_size,
        ):
            raise ValueError(
                f"end-to-end bench: the {split} split is not in memory at {image_size} px "
                "(the plain script reads whole arrays, as FER2013's CSV gives them)"
            )
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = faces.images, faces.labels
    np.savez(path, **arrays)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def wall_seconds(command: list[str], log_file: Path, env: dict[str, str] | None = None) -> float:
    """Start-up to exit of `command`, its output kept in `log_file`; a failure is an error
    that names the log."""
    started = time.perf_counter()
    with log_file.open("w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - started
    if code:
        raise RuntimeError(f"{' '.join(command)} exited {code}; its output: {log_file}")
    return seconds


def compare_end_to_end(overrides: list[str], pairs: int, workdir: Path) -> dict[str, Any]:
    """`pairs` alternating runs of `python -m fer_lab.train <overrides>` and the plain script.
    Writing the plain script's data fills the parse cache; one untimed CLI run then warms the
    OS's file cache and Python's bytecode cache."""
    workdir.mkdir(parents=True, exist_ok=True)
    overrides = [*overrides, f"paths.cache_dir={workdir / 'cache'}"]
    cfg = bench_config(overrides, workdir / "spec")
    spec = plain_spec(cfg, workdir / "plain")
    write_faces(instantiate(cfg.dataset).load(), cfg.data.image_size, Path(spec["data"]))
    spec_file = workdir / "plain_spec.json"
    spec_file.write_text(json.dumps(spec, indent=2))

    def cli(name: str) -> float:
        run = [f"hydra.run.dir={workdir / name}", f"paths.root_dir={workdir}"]
        command = [sys.executable, "-m", "fer_lab.train", *overrides, *run]
        return wall_seconds(command, workdir / f"{name}.log")

    def plain(name: str) -> float:
        command = [sys.executable, "-m", "fer_lab.bench.plain_script", str(spec_file)]
        return wall_seconds(command, workdir / f"{name}.log", same_allocator_env(os.environ))

    cli("warmup")
    fer_lab_s, plain_s = [], []
    for pair in range(pairs):
        if pair % 2 == 0:
            fer_lab_s.append(cli(f"fer_lab{pair}"))
            plain_s.append(plain(f"plain{pair}"))
        else:
            plain_s.append(plain(f"plain{pair}"))
            fer_lab_s.append(cli(f"fer_lab{pair}"))
        log.info(
            "end to end, pair %d: fer_lab %.1f s, plain %.1f s", pair, fer_lab_s[-1], plain_s[-1]
        )
    ratios = [f / p for f, p in zip(fer_lab_s, plain_s, strict=True)]
    return {
        "model": cfg.names.model,
        "fer_lab_channels_last": bool(cfg.speed.channels_last),
        "command": "python -m fer_lab.train " + " ".join(overrides),
        "epochs": spec["epochs"],
        "pairs": pairs,
        "fer_lab_s": fer_lab_s,
        "plain_s": plain_s,
        "ratios": ratios,
        "ratio_fer_lab_over_plain": statistics.median(ratios),
    }
