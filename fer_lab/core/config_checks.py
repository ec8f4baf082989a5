"""Checks that turn impossible configs into one-line errors before any data or weights load
(torch-free, so they run before the training code is imported)."""

import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.resources import files
from pathlib import Path

from omegaconf import DictConfig

from fer_lab.core.errors import ConfigError

# (key, test, what the value must be); a key absent from the composed config is not checked.
RULES: tuple[tuple[str, Callable[[float], bool], str], ...] = (
    ("optimizer.lr", lambda v: v > 0, "> 0"),
    ("optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optimizer.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.input_size", lambda v: v >= 1, ">= 1"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.num_workers", lambda v: v >= 0, ">= 0"),
    ("speed.steps_per_call", lambda v: v >= 1 and v == int(v), "a whole number >= 1"),
    ("trainer.max_epochs", lambda v: v >= 1 or v == -1, ">= 1 (or -1 for no limit)"),
    ("dataset.val_fraction", lambda v: 0 < v < 1, "in (0, 1)"),
    ("dataset.test_fraction", lambda v: 0 < v < 1, "in (0, 1)"),
)

# data.pipeline values (fer_lab/data/datamodule.py).
PIPELINES = ("auto", "per_sample", "on_device")


def _select(cfg: DictConfig, key: str) -> object:
    node: object = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return None
        node = node[part]
    return node


def check_values(cfg: DictConfig) -> None:
    """Hyperparameters in range and data shaped for the model, each failure naming its key."""
    for key, test, requirement in RULES:
        value = _select(cfg, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}={value!r}: must be a number {requirement}")
        if not test(value):
            raise ConfigError(f"{key}={value}: must be {requirement}")
    pipeline = _select(cfg, "data.pipeline")
    if pipeline is not None and pipeline not in PIPELINES:
        raise ConfigError(f"data.pipeline={pipeline!r}: must be one of {list(PIPELINES)}")
    for data_key, model_key in (("image_size", "input_size"), ("channels", "in_channels")):
        if cfg.data[data_key] != cfg.model[model_key]:
            raise ConfigError(
                f"data.{data_key}={cfg.data[data_key]} but model {cfg.names.model} takes "
                f"model.{model_key}={cfg.model[model_key]}; leave data.{data_key} at its "
                f"default (${{model.{model_key}}}) or choose another model"
            )


def check_launch(cfg: DictConfig, multirun: bool, environ: Mapping[str, str]) -> None:
    """Combinations of DDP that cannot work, refused before anything starts."""
    if _select(cfg, "speed.compile") and _select(cfg, "trainer.sync_batchnorm"):
        raise ConfigError(
            "speed.compile=true with trainer.sync_batchnorm=true (trainer=ddp on GPUs): "
            "torch.compile breaks its graph at every SyncBatchNorm and recompiles, slower "
            "than not compiling. Set trainer.sync_batchnorm=false (per-GPU BatchNorm "
            "statistics) or speed.compile=false"
        )
    strategy = str(_select(cfg, "trainer.strategy") or "")
    external = int(environ.get("SLURM_NTASKS", "1")) > 1 or "TORCHELASTIC_RUN_ID" in environ
    spawns = strategy.startswith("ddp") and _select(cfg, "trainer.devices") != 1
    if multirun and spawns and not external:
        raise ConfigError(
            f"trainer.strategy={strategy} in a multirun (-m): Lightning starts the other "
            "DDP processes by re-running the command line, so each would start a sweep "
            "of its own. Run each trial as a multi-process SLURM job instead "
            "(hydra/launcher=submitit_slurm hydra.launcher.tasks_per_node=N "
            'trainer.devices=N, README "DDP"), or sweep with trainer=gpu'
        )


def check_speed(cfg: DictConfig) -> None:
    """speed.steps_per_call and speed.cuda_graphs with what they cannot run with."""
    manual = (_select(cfg, "speed.steps_per_call") or 1) > 1 or _select(cfg, "speed.cuda_graphs")
    clip = _select(cfg, "trainer.gradient_clip_val")
    accumulate = _select(cfg, "trainer.accumulate_grad_batches") or 1
    for key, value, used in (
        ("trainer.gradient_clip_val", clip, bool(clip)),
        ("trainer.accumulate_grad_batches", accumulate, accumulate != 1),
    ):
        if manual and used:
            raise ConfigError(
                f"{key}={value} with speed.steps_per_call > 1 or speed.cuda_graphs=true: "
                "those step the optimizer themselves, where Lightning cannot clip or "
                "accumulate. Unset it, or set speed.steps_per_call=1 speed.cuda_graphs=false"
            )
    strategy = str(_select(cfg, "trainer.strategy") or "auto")
    if (_select(cfg, "speed.steps_per_call") or 1) > 1 and strategy.startswith("ddp"):
        raise ConfigError(
            f"speed.steps_per_call > 1 with trainer.strategy={strategy}: DDP all-reduces the "
            "gradients of one backward pass per forward of its wrapper, and the steps of a "
            "call share one. Use speed.steps_per_call=1 with DDP"
        )
    if not _select(cfg, "speed.cuda_graphs"):
        return
    accelerator = str(_select(cfg, "trainer.accelerator"))
    scheduler = str(_select(cfg, "scheduler.scheduler._target_") or "")
    refusals = {
        "trainer.accelerator": (
            accelerator not in ("gpu", "cuda"),
            f"is {accelerator}; CUDA graphs need one CUDA GPU (trainer=gpu)",
        ),
        "trainer.devices": (
            _select(cfg, "trainer.devices") != 1
            or str(_select(cfg, "trainer.strategy") or "auto") not in ("auto", "single_device"),
            "must be 1 without a DDP strategy: a graph would capture one process's gradient "
            "all-reduce",
        ),
        "speed.compile": (
            bool(_select(cfg, "speed.compile")),
            "is true; torch.compile brings graphs of its own (mode=reduce-overhead)",
        ),
        "trainer.precision": (
            str(_select(cfg, "trainer.precision")).startswith("16"),
            "is 16-mixed, whose gradient scaler decides on the host; use bf16-mixed or 32",
        ),
        "mixing": (
            _select(cfg, "mixing") is not None,
            "is set; its generator is not one a CUDA graph captures",
        ),
        "scheduler": (
            scheduler.endswith("OneCycleLR")
            and _select(cfg, "scheduler.scheduler.cycle_momentum") is not False,
            "is one-cycle, which cycles the momentum as a Python number a graph would freeze; "
            "set scheduler.scheduler.cycle_momentum=false",
        ),
    }
    for key, (refused, why) in refusals.items():
        if refused:
            raise ConfigError(
                f"speed.cuda_graphs=true: {key} {why}, or set speed.cuda_graphs=false"
            )


def check_classes(
    checkpoint_classes: Sequence[str] | None, classes: Sequence[str], ckpt: Path
) -> None:
    """A checkpoint continues only on the classes it was trained on, in the same order."""
    if checkpoint_classes is not None and list(checkpoint_classes) != list(classes):
        raise ConfigError(
            f"{ckpt}: trained on {len(checkpoint_classes)} classes {list(checkpoint_classes)}, "
            f"but dataset.classes has {len(classes)}: {list(classes)}; use the dataset config "
            "it was trained with"
        )


def check_choices(argv: Sequence[str]) -> None:
    """`group=name` on the command line must name a config of that group.

    Hydra reports this too, but exits with 1 like a crash; checking first gives the exit code
    2 every other user error gets. Sweep values (`model=a,b`, `glob(...)`) are checked per name.
    """
    conf = files("fer_lab.conf")
    extra = [Path(v) for k, v in _options(argv) if k in ("--config-dir", "-cd")]
    for key, value in _options(argv):
        group = key.lstrip("+")
        if "." in group or "/" in group or not conf.joinpath(group).is_dir() or "(" in value:
            continue
        known = {p.name[:-5] for p in conf.joinpath(group).iterdir() if p.name.endswith(".yaml")}
        for folder in extra:
            known |= {p.stem for p in (folder / group).glob("*.yaml")}
        unknown = [n for n in value.split(",") if n not in known and n != "null"]
        if unknown:
            print(f"Unknown {group} {unknown[0]!r}: choose one of {sorted(known)}", file=sys.stderr)
            sys.exit(2)


def _options(argv: Sequence[str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            pairs.append((arg, argv[i + 1]))
        elif "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            pairs.append((key, value))
        elif arg.startswith("--config-dir="):
            pairs.append(("--config-dir", arg.split("=", 1)[1]))
    return pairs
