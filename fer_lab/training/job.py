"""The training job behind `python -m fer_lab.train`: fit, select on val, test once."""

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from fer_lab.core.config_checks import check_classes
from fer_lab.core.errors import FERLabError
from fer_lab.core.secrets import masked
from fer_lab.data import FERDataModule
from fer_lab.models.base import check_forward
from fer_lab.sweeps.pruning import OptunaPruning
from fer_lab.tracking.run_config import log_run_config, log_skipped_data
from fer_lab.tracking.run_logger import build_logger, mark_run, update_parent_leaderboard
from fer_lab.training.module import FERLitModule, scalar_metrics
from fer_lab.training.resume import (
    ResumePoint,
    check_extension,
    find_resume_point,
    write_state,
)
from fer_lab.training.run_lock import claimed, is_rank_zero
from fer_lab.training.stopping import NonFiniteLossError
from fer_lab.training.summary import end_of_run

log = logging.getLogger(__name__)


class _NoAdvertisements(logging.Filter):
    """Lightning advertises its cloud services on every Trainer ("💡 Tip: ... litlogger",
    "... litmodels") and lists the accelerators it did not find; fer_lab's commands print only
    what concerns the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not message.startswith(("💡 Tip:", "TPU available", "HPU available"))


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdvertisements())
# Lightning 2.6 calls torch's deprecated `isinstance(treespec, LeafSpec)` on every fit and test;
# nothing a fer_lab user does can change it.
warnings.filterwarnings(
    "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=Warning
)
# Lightning advises `srun` whenever SLURM is installed; fer_lab's SLURM runs go through srun or
# submitit already (README "DDP", "Scale out"), and a local run on such a machine is not one.
warnings.filterwarnings(
    "ignore", message=r"The `srun` command is available on your system but is not used"
)


@dataclass
class TrainingJob:
    """What `python -m fer_lab.train` fits, built from one config (also used by the benchmark)."""

    datamodule: FERDataModule
    module: FERLitModule
    logger: Logger
    trainer: pl.Trainer


def build_job(
    cfg: DictConfig, run_id: str | None = None, extra_callbacks: Sequence[pl.Callback] = ()
) -> TrainingJob:
    """The data, the LightningModule, the logger, the callbacks and the trainer of `cfg`."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = instantiate(cfg.model)
    check_forward(
        net, cfg.model.in_channels, cfg.model.input_size, len(datamodule.classes), cfg.names.model
    )
    speed = cfg.get("speed") or {}
    module = FERLitModule(
        net=net,
        loss=instantiate(cfg.loss, class_counts=datamodule.class_counts("train")),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
        class_names=datamodule.classes,
        config=masked(OmegaConf.to_container(cfg, resolve=True)),  # travels with every .ckpt
        channels_last=bool(speed.get("channels_last", False)),
        compile=bool(speed.get("compile", False)),
        steps_per_call=int(speed.get("steps_per_call", 1)),
        cuda_graphs=bool(speed.get("cuda_graphs", False)),
        mixing=instantiate(cfg.mixing) if cfg.get("mixing") else None,
    )
    logger = build_logger(cfg, run_id=run_id)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    if not cfg.trainer.get("enable_progress_bar", True):  # else Lightning refuses the bar
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.get("sweep") and cfg.sweep.get("trial_id") is not None:
        callbacks.append(OptunaPruning.for_current_job(cfg))
    trainer = instantiate(
        cfg.trainer,
        logger=logger,
        callbacks=[*callbacks, *extra_callbacks],
        precision=supported_precision(cfg.trainer.precision),
        log_every_n_steps=logging_interval(cfg, datamodule),
    )
    keep_deterministic_fast()
    return TrainingJob(datamodule, module, logger, trainer)


def logging_interval(cfg: DictConfig, datamodule: FERDataModule) -> int:
    """trainer.log_every_n_steps, lowered to the epoch's length when an epoch is shorter (so
    that short runs log within their epochs too, and Lightning has nothing to advise)."""
    configured = int(cfg.trainer.get("log_every_n_steps") or 50)
    per_batch = datamodule.batch_size * datamodule.steps_per_batch
    batches = max(1, len(datamodule.splits.train.labels) // per_batch)
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        batches = min(batches, limit)
    return max(1, min(configured, batches))


def keep_deterministic_fast() -> None:
    """`trainer.deterministic=true` also makes torch fill every new tensor, a guard against
    reading uninitialised memory that nothing here does; on a CPU those fills of each
    activation cost ~15% of a tf_emotion_cnn step (profiled). The algorithms stay
    deterministic without them."""
    torch.utils.deterministic.fill_uninitialized_memory = False


def supported_precision(precision: str) -> str:
    """bf16 mixed precision needs an Ampere or newer GPU; older ones get fp16 mixed. (torch's
    default check also accepts bf16 that older GPUs only emulate, slower than fp32.)"""
    gpu = torch.cuda.is_available()
    native_bf16 = gpu and torch.cuda.is_bf16_supported(including_emulation=False)
    if str(precision).startswith("bf16") and gpu and not native_bf16:
        log.warning("This GPU has no bf16: trainer.precision=%s becomes 16-mixed", precision)
        return "16-mixed"
    return precision


def fit_and_test(cfg: DictConfig) -> float:
    """Fit on train, select on val, test the best checkpoint once; return `cfg.optimized_metric`.

    Expects a config that passed `fer_lab.train.preflight`. A stopped run (Ctrl-C, SIGTERM,
    SIGKILL, a crash) continues from its last epoch with `resume=auto`, in the same output
    folder and MLflow run; one killed after its last epoch redoes only the artifacts and the
    test. Under DDP every rank runs this; rank zero alone writes the run's state and logs.
    """
    resume = find_resume_point(cfg)
    with claimed(resume.output_dir if resume else Path(cfg.paths.output_dir)):
        if resume is not None:
            scheduler = HydraConfig.get().runtime.choices.scheduler
            check_extension(resume, cfg.trainer.max_epochs, scheduler)
            cfg.paths.output_dir = str(resume.output_dir)
            log.info("Resuming %s from %s", resume.output_dir, resume.checkpoint)
        pl.seed_everything(cfg.seed, workers=True)
        job = build_job(cfg, run_id=resume.mlflow_run_id if resume else None)
        try:
            return _run(cfg, resume, job)
        finally:
            update_parent_leaderboard(job.logger)  # a grid's or sweep's standings


def _run(cfg: DictConfig, resume: ResumePoint | None, job: TrainingJob) -> float:
    started = time.perf_counter()
    if resume is not None:
        check_classes(resume.classes, job.datamodule.classes, resume.checkpoint)
    datamodule, module, logger, trainer = job.datamodule, job.module, job.logger, job.trainer
    pruning = next((c for c in trainer.callbacks if isinstance(c, OptunaPruning)), None)
    if resume is not None:
        mark_run(logger, "RUNNING")
    elif is_rank_zero():
        log_run_config(logger, cfg, module.net)
        log_skipped_data(logger, datamodule.splits.skipped, cfg.paths.output_dir)
    run_id = getattr(logger, "run_id", None)
    write_state(cfg.paths.output_dir, "running", run_id)

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume.checkpoint if resume else None)
    except SystemExit as stop:  # StopRequested, Lightning's SIGTERMException or its Ctrl-C exit
        write_state(cfg.paths.output_dir, "stopped", run_id)
        mark_run(logger, "KILLED", "stopped by a signal")
        log.warning(
            "Stopped; continue with the same command plus resume=auto (or resume=%s)",
            cfg.paths.output_dir,
        )
        code = 143 if isinstance(stop, SIGTERMException) else stop.code
        raise SystemExit(code if isinstance(code, int) and code > 1 else 130) from None
    except NonFiniteLossError as error:
        write_state(cfg.paths.output_dir, "failed", run_id)
        mark_run(logger, "FAILED", str(error))
        raise
    metrics = {**module.restored_metrics, **scalar_metrics(trainer.callback_metrics)}
    if cfg.optimized_metric not in metrics:
        raise FERLabError(
            f"optimized_metric={cfg.optimized_metric!r} was not logged; "
            f"logged metrics: {sorted(metrics)}"
        )
    score = metrics[cfg.optimized_metric]
    if pruning is not None and pruning.pruned_at is not None:
        write_state(cfg.paths.output_dir, "finished", run_id)
        raise optuna.TrialPruned(
            f"pruned after epoch {pruning.pruned_at} ({cfg.optimized_metric}={score:.4f})"
        )
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.test:
        # The printed summary below replaces Lightning's table of 16-digit test metrics.
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
    write_state(cfg.paths.output_dir, "finished", run_id)
    if is_rank_zero():
        metrics = {**metrics, **scalar_metrics(trainer.callback_metrics)}
        log.info(
            "\n%s",
            end_of_run(
                metrics,
                module.best_epoch,
                trainer.current_epoch,
                time.perf_counter() - started,
                cfg.paths.output_dir,
                best,
                mlflow_run(cfg, logger),
            ),
        )
    return score


def mlflow_run(cfg: DictConfig, logger: Logger) -> dict[str, str] | None:
    """Where the run is in MLflow, for the end-of-run summary (None with another logger)."""
    run_id = getattr(logger, "run_id", None)
    if run_id is None or "tracking_uri" not in cfg.logger:
        return None
    return {
        "tracking_uri": cfg.logger.tracking_uri,
        "experiment": cfg.logger.experiment_name,
        "experiment_id": logger.experiment_id,
        "run_id": run_id,
        "run_name": (getattr(logger, "tags", None) or {}).get("mlflow.runName", run_id),
    }
