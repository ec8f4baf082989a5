"""Finding the run to continue: `resume=auto`, `resume=<run dir or .ckpt>`, or the same folder.

Each run keeps `run_state.json` (status and MLflow run id) beside `checkpoints/last.ckpt`.
A run is resumable until its status is `finished`: a killed, crashed or stopped run continues
from its last completed epoch, in its own folder and its own MLflow run.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fer_lab.core.errors import ConfigError
from fer_lab.training.checkpoint_io import load_checkpoint
from fer_lab.training.run_lock import is_rank_zero

log = logging.getLogger(__name__)

STATE_FILE = "run_state.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


# Overrides that may differ between a run and the command that continues it.
CONTINUE_OVERRIDES = ("resume", "trainer.max_epochs")
# Scheduler state keys that fix the schedule's length when the run starts.
SCHEDULE_LENGTH_KEYS = ("T_max", "total_steps", "total_iters")


@dataclass
class ResumePoint:
    output_dir: Path
    checkpoint: Path
    mlflow_run_id: str | None
    classes: list[str] | None
    planned_epochs: int | None  # trainer.max_epochs of the run so far
    schedule_length: dict[str, int]  # e.g. {"T_max": 20} for a cosine schedule


def write_state(output_dir: str | Path, status: str, mlflow_run_id: str | None) -> None:
    """Record the run's status ('running', 'stopped', 'failed', 'finished') atomically; rank
    zero's to write (the other ranks of a DDP run know no MLflow run id)."""
    if not is_rank_zero():
        return
    path = Path(output_dir) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"status": status, "mlflow_run_id": mlflow_run_id}))
    partial.replace(path)


def read_state(output_dir: Path) -> dict[str, str | None]:
    path = output_dir / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def find_resume_point(cfg: DictConfig) -> ResumePoint | None:
    """The run this job continues, or None for a fresh start.

    `resume=auto` looks at this job's folder, then at its siblings (newest first) for an
    unfinished run of the same command; `resume=null` only at this job's folder (a re-run with
    the same `hydra.run.dir`); any other value is a run folder or checkpoint to continue.
    """
    here = Path(HydraConfig.get().runtime.output_dir)
    resume = cfg.get("resume")
    if resume not in (None, "auto"):
        return _explicit(Path(str(resume)).expanduser(), here)
    candidates = [here]
    if resume == "auto":
        siblings = [p for p in here.parent.iterdir() if p.is_dir() and p != here]
        candidates += sorted(siblings, key=lambda p: p.stat().st_mtime, reverse=True)
    command = _command(HydraConfig.get().overrides.task)
    for folder in candidates:
        state = read_state(folder)
        if not state or state.get("status") == "finished":
            continue
        if not (folder / LAST_CHECKPOINT).is_file() or _recorded_command(folder) != command:
            continue
        return _point(folder, folder / LAST_CHECKPOINT, state.get("mlflow_run_id"))
    if resume == "auto":
        log.info(
            "resume=auto: no unfinished run of this command under %s; starting anew", here.parent
        )
    return None


def _explicit(path: Path, here: Path) -> ResumePoint:
    checkpoint = path / LAST_CHECKPOINT if path.is_dir() else path
    if not checkpoint.is_file():
        raise ConfigError(
            f"resume={path}: no checkpoint there (expected a run folder with {LAST_CHECKPOINT} "
            "or a .ckpt file)"
        )
    run_dir = checkpoint.parent.parent
    if (run_dir / STATE_FILE).is_file():
        return _point(run_dir, checkpoint, read_state(run_dir).get("mlflow_run_id"))
    return _point(here, checkpoint, None)


def _point(output_dir: Path, checkpoint: Path, run_id: str | None) -> ResumePoint:
    # mmap: only the few small entries read here are paged in, not the weights.
    saved = load_checkpoint(checkpoint, mmap=True)
    config = saved.get("fer_lab_config") or {}
    schedulers = saved.get("lr_schedulers") or [{}]
    return ResumePoint(
        output_dir,
        checkpoint,
        run_id,
        saved.get("fer_lab_classes"),
        config.get("trainer", {}).get("max_epochs"),
        {key: schedulers[0][key] for key in SCHEDULE_LENGTH_KEYS if key in schedulers[0]},
    )


def check_extension(point: ResumePoint, max_epochs: int, scheduler: str) -> None:
    """A larger `trainer.max_epochs` continues a run only if its LR schedule has no fixed
    length: a cosine or one-cycle schedule was laid out over the planned epochs when the run
    started, and its restored state would go past its end (one-cycle raises, cosine climbs)."""
    planned = point.planned_epochs
    longer = planned is not None and planned != -1 and (max_epochs == -1 or max_epochs > planned)
    if longer and point.schedule_length:
        fixed = ", ".join(f"{k}={v}" for k, v in point.schedule_length.items())
        raise ConfigError(
            f"trainer.max_epochs={max_epochs}: {point.output_dir} was planned for {planned} "
            f"epochs and scheduler={scheduler} fixed its length to that ({fixed}) when it "
            f"started, so it cannot be extended. Continue it with trainer.max_epochs={planned}, "
            "or train longer in a new run (scheduler=none and scheduler=plateau runs can be "
            "extended)"
        )


def _command(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in CONTINUE_OVERRIDES)


def _recorded_command(folder: Path) -> list[str] | None:
    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    return _command(list(OmegaConf.load(path)))
