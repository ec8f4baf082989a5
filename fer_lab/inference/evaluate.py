"""What `python -m fer_lab.eval ckpt_path=...` does: score a trained checkpoint on its val or
test split, optionally with test-time augmentation, and record metrics, confusion matrices and
a per-class table. By default they go into the checkpoint's own training run, so a model's
curves and its final evaluations sit in one MLflow row; `mlflow_run=new` gives the
evaluation its own run.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.utils import instantiate
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from fer_lab.core.config_checks import check_classes
from fer_lab.core.errors import ConfigError
from fer_lab.data.datamodule import FaceSource
from fer_lab.data.faces import FaceDataset
from fer_lab.inference.checkpoint import TrainedModel, inference_device, load_trained
from fer_lab.inference.reports import write_reports
from fer_lab.inference.scores import Scores, score
from fer_lab.inference.tta import TTA_MODES, predict_proba
from fer_lab.tracking.mlflow_store import prepare_tracking_store
from fer_lab.tracking.provenance import git_commit

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
MLFLOW_RUNS = ("train", "new")


@dataclass
class Evaluation:
    scores: Scores
    probabilities: torch.Tensor  # [N, K], averaged over the TTA views
    labels: torch.Tensor
    run_id: str
    files: list[Path]


def evaluate(cfg: DictConfig, output_dir: Path) -> Evaluation:
    """Predict the split, write the reports to `output_dir` and log them to MLflow."""
    device = check_settings(cfg)
    prepare_tracking_store(cfg.tracking_uri)  # an unreachable server fails before any work
    trained = load_trained(cfg.ckpt_path)
    source = dataset_source(cfg, trained)
    faces = getattr(source.load(), cfg.split)
    dataset = FaceDataset(faces, trained.channels, trained.eval_transform())
    loader = DataLoader(dataset, cfg.data.batch_size, num_workers=cfg.data.num_workers)
    probabilities, labels = predict_proba(trained.net, loader, cfg.tta, cfg.tencrop_scale, device)
    scores = score(probabilities, labels, trained.classes)
    model = trained.config.names.model
    title = f"{model} on {source.name} {cfg.split}, tta={cfg.tta}"
    files = write_reports(scores, probabilities, labels, trained.classes, output_dir, title)
    run_id = log_to_mlflow(cfg, trained, source.name, scores, files)
    print(
        f"{title}: acc={scores.accuracy:.4f} f1_macro={scores.f1_macro:.4f} "
        f"top2_acc={scores.top2_accuracy:.4f} nll={scores.nll:.4f} (n={len(labels)}); "
        f"MLflow run {run_id}, files in {output_dir}"
    )
    return Evaluation(scores, probabilities, labels, run_id, files)


def check_settings(cfg: DictConfig) -> torch.device:
    """Every value a user can get wrong, checked before the checkpoint and data load."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path is required: a .ckpt from a training run's checkpoints/")
    for key, allowed in (("split", SPLITS), ("tta", TTA_MODES), ("mlflow_run", MLFLOW_RUNS)):
        if cfg[key] not in allowed:
            raise ConfigError(f"{key}={cfg[key]!r}: choose one of {', '.join(allowed)}")
    if cfg.tta == "tencrop" and not cfg.tencrop_scale >= 1:
        raise ConfigError(f"tencrop_scale={cfg.tencrop_scale}: must be >= 1 (crops keep the size)")
    if cfg.data.batch_size < 1 or cfg.data.num_workers < 0:
        raise ConfigError("data.batch_size must be >= 1 and data.num_workers >= 0")
    return inference_device(cfg.device)


def dataset_source(cfg: DictConfig, trained: TrainedModel) -> FaceSource:
    """The checkpoint's training dataset, or `dataset=`'s with the checkpoint's seed (unless
    `seed=` says otherwise), so that seeded splits hold out the same images as in training."""
    if cfg.get("dataset") is None:
        config = trained.config.dataset
    else:
        if cfg.seed is None:
            cfg.seed = trained.config.seed
        config = cfg.dataset
    check_classes(trained.classes, list(config.classes), trained.path)
    return instantiate(config)


def log_to_mlflow(
    cfg: DictConfig, trained: TrainedModel, dataset: str, scores: Scores, files: list[Path]
) -> str:
    """Metrics `eval/<split>/<tta>/*` and the files under `eval/<split>_<tta>/`; returns the run."""
    client = MlflowClient(cfg.tracking_uri)
    training_run = find_training_run(client, trained.mlflow_run_id(), cfg.tracking_uri)
    prefix = f"eval/{cfg.split}/{cfg.tta}"
    settings = {"split": cfg.split, "tta": cfg.tta, "dataset": dataset}
    settings["checkpoint"] = str(trained.path.resolve())
    if cfg.tta == "tencrop":
        settings["tencrop_scale"] = cfg.tencrop_scale
    into_training_run = cfg.mlflow_run == "train" and training_run is not None
    if into_training_run:
        run_id = training_run.info.run_id
        # Tags, not params: params cannot change, and a later evaluation may use other settings.
        tags = [RunTag(f"{prefix}/{key}", str(value)) for key, value in settings.items()]
        params = []
    else:
        run_id = create_eval_run(client, cfg, trained, dataset, training_run)
        params = [Param(key, str(value)) for key, value in settings.items()]
        tags = []
    stamp = int(time.time() * 1000)
    metrics = [Metric(f"{prefix}/{k}", v, stamp, 0) for k, v in scores.metrics().items()]
    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
    for path in files:
        client.log_artifact(run_id, str(path), f"eval/{cfg.split}_{cfg.tta}")
    if not into_training_run:
        client.set_terminated(run_id)
    return run_id


def find_training_run(client: MlflowClient, run_id: str | None, uri: str) -> Run | None:
    """The checkpoint's training run if this store has it; a warning when it should but not."""
    if run_id is None:
        log.info("The checkpoint names no MLflow training run; the evaluation gets a new run")
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        run = None
    if run is None or run.info.lifecycle_stage == "deleted":
        log.warning(
            "Training run %s is not in %s (set MLFLOW_TRACKING_URI to the store it was trained "
            "with); the evaluation gets a new run",
            run_id,
            uri,
        )
        return None
    return run


def create_eval_run(
    client: MlflowClient,
    cfg: DictConfig,
    trained: TrainedModel,
    dataset: str,
    training_run: Run | None,
) -> str:
    """A run named "eval <model> <split> <tta>", nested under the training run when known."""
    model = str(trained.config.names.model)
    training_run_id = trained.mlflow_run_id()
    tags = {
        "model": model,
        "dataset": dataset,
        "checkpoint": str(trained.path.resolve()),
        "mlflow.source.git.commit": git_commit(),
    }
    if training_run_id:
        tags["training_run_id"] = training_run_id
    if training_run is not None:
        tags["mlflow.parentRunId"] = training_run.info.run_id
        experiment_id = training_run.info.experiment_id
    else:  # the experiment a training run on this dataset would use
        found = client.get_experiment_by_name(dataset)
        experiment_id = found.experiment_id if found else client.create_experiment(dataset)
    run_name = f"eval {model} {cfg.split} {cfg.tta}"
    return client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
