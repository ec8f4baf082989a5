"""An Optuna (>= 4, ask/tell) sweeper: persistent studies, pruning, failure budget, MLflow.

Each `python -m fer_lab.train -m hparams_search=...` resumes the named study in its
storage until it holds `n_trials` finished trials. Trials train and validate only
(`test=false`); the best trial's config is written to `<sweep dir>/best.yaml`.
"""

import contextlib
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from fer_lab.core.errors import FERLabError
from fer_lab.core.secrets import mask_secrets
from fer_lab.sweeps.heartbeats import (
    KeepAlive,
    LostTrial,
    LostTrials,
    counted_trials,
    record_heartbeat,
    retried_as,
)
from fer_lab.sweeps.search_space import format_override, parse_search_space
from fer_lab.sweeps.storage import (
    is_connection_error,
    open_storage,
    retry_storage,
    study_lock,
)
from fer_lab.tracking.mlflow_store import (
    TRACKING_WAIT_ENV,
    ServerUnreachable,
    is_connectivity_error,
    prepare_tracking_store,
)
from fer_lab.tracking.run_identity import logs_to_mlflow

if TYPE_CHECKING:
    from fer_lab.sweeps.parent_runs import SweepRun

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_ABSENT = object()
# How often a worker with nothing left to ask looks again at the trials other workers run.
WAIT_POLL_S = 5.0


def is_outage(error: BaseException) -> bool:
    """Whether a trial's error says the tracking server or the study's database was out of
    reach, rather than that the trial itself went wrong."""
    return (
        isinstance(error, ServerUnreachable)
        or is_connectivity_error(error)
        or is_connection_error(error)
    )


def start_worker() -> subprocess.Popen:
    """Another process running this very command as one worker of the same study."""
    own = ("hydra.sweeper.workers=", "hydra.sweeper.n_jobs=")
    overrides = [a for a in sys.argv[1:] if not a.lstrip("+~").startswith(own)]
    command = [sys.executable, "-m", "fer_lab.train", *overrides, "hydra.sweeper.workers=1"]
    return subprocess.Popen(command)


@dataclass
class OptunaSweeperConf:
    # Hydra instantiates only plugin classes defined in the hydra_plugins package: there,
    # OptunaSweeper subclasses OptunaStudySweeper below (hydra_plugins/fer_lab_optuna/sweeper.py).
    _target_: str = "hydra_plugins.fer_lab_optuna.sweeper.OptunaSweeper"
    study_name: str = "fer_lab"
    # A journal file path (default, safe for parallel writers) or an RDB URL.
    storage: str = "optuna.journal"
    direction: str = "maximize"
    # Trials the study should hold in all, across every worker on it (finished or running);
    # re-running the command resumes up to it.
    n_trials: int = 20
    # Trials asked for and launched together (run in parallel by e.g. hydra/launcher=joblib);
    # the next batch starts when the slowest of this one ends.
    n_jobs: int = 1
    # Worker processes this command runs on this machine (itself and workers - 1 more), each
    # training one trial at a time and asking for the next as soon as it ends: no slot waits
    # for a batch's slowest or a pruned trial. Overrides n_jobs with 1.
    workers: int = 1
    # Failed trials tolerated in this invocation before the sweep stops (a trial whose worker
    # died is retried instead, and not charged here).
    max_failures: int = 3
    # Times a trial whose worker died (no heartbeat for grace_period s) is run again with
    # the same parameters; the dead trial and its retry count once towards n_trials.
    max_retries: int = 1
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    pruner: Any = None
    params: dict[str, str] = field(default_factory=dict)
    # Every storage: a running trial records a heartbeat this often (s); one whose heartbeat
    # is grace_period s old (its worker died) is failed, and retried, when a worker next asks.
    heartbeat_interval: int = 60
    grace_period: int = 180


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="fer_lab"
)


class OptunaStudySweeper(Sweeper):
    """The sweeper's logic; Hydra instantiates its hydra_plugins subclass, `OptunaSweeper`."""

    def __init__(
        self,
        study_name: str,
        storage: str,
        direction: str,
        n_trials: int,
        n_jobs: int,
        max_failures: int,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner | None,
        params: DictConfig,
        heartbeat_interval: int = 60,
        grace_period: int = 180,
        workers: int = 1,
        max_retries: int = 1,
    ) -> None:
        # Hydra instantiates `sampler` and `pruner` from their `_target_` before we get them.
        self.study_name = study_name
        self.storage = storage
        self.direction = direction
        self.n_trials = n_trials
        self.workers = workers
        self.n_jobs = 1 if workers > 1 else n_jobs
        self.max_failures = max_failures
        self.sampler = sampler
        self.pruner = pruner
        self.params = OmegaConf.to_container(params, resolve=True) if params else {}
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.lost_trials = LostTrials(grace_period, max_retries)
        self._last_news: tuple[int, int, int] | None = None  # what _ask last logged
        # Asked for by an `_ask` that then failed (the database dropped): the next one's.
        self._asked: list[optuna.Trial] = []
        self._warned: set[tuple[str, tuple[str, ...]]] = set()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> optuna.Study:
        """Run the study to `n_trials`; a user's mistake that stops the sweep itself (a tracking
        server refusing this login) ends in one line and exit code 2, as a single run's does."""
        try:
            return self._sweep(arguments)
        except FERLabError as error:
            log.error("%s", error)
            sys.exit(2)

    def _sweep(self, arguments: list[str]) -> optuna.Study:
        # Imported here so registering the plugin (on every `python -m fer_lab.train`) stays
        # light: it pulls in MLflow.
        from fer_lab.sweeps.parent_runs import SweepRun

        space, fixed = parse_search_space(self.params, arguments)
        space = self._drop_absent_keys(space)
        storage = retry_storage(
            lambda: open_storage(
                self.storage, self.heartbeat_interval, self.grace_period, on_lost=self.lost_trials
            )
        )
        study = retry_storage(
            lambda: optuna.create_study(
                study_name=self.study_name,
                storage=storage,
                sampler=self.sampler,
                # Optuna's default would be a median rule.
                pruner=self.pruner or optuna.pruners.NopPruner(),
                direction=self.direction,
                load_if_exists=True,
            )
        )
        wait_s = self._server_wait_s()
        # A server outage is a pause for the whole sweep: its trials, in this process or
        # launched elsewhere, and its helper workers wait for it as this process does.
        os.environ[TRACKING_WAIT_ENV] = str(wait_s)
        if wait_s:
            prepare_tracking_store(self.config.logger.tracking_uri, wait_s=wait_s)
        with study_lock(self.storage, self.study_name):  # one parent run for all workers
            sweep_run = SweepRun.start(
                self.config, self.study_name, space, self.describe(), server_wait_s=wait_s
            )
            sweep_run.adopt_dead_workers()
        helpers = [start_worker() for _ in range(self.workers - 1)]
        try:
            self._run_trials(study, storage, space, fixed, sweep_run)
        finally:
            for helper in helpers:
                if helper.wait() != 0:
                    log.error("A worker process of this sweep exited with %d", helper.returncode)
        with study_lock(self.storage, self.study_name):
            sweep_run.adopt_dead_workers()
        best_yaml = self._write_best(study)
        sweep_run.finish(study, best_yaml=best_yaml)
        return study

    def _run_trials(
        self,
        study: optuna.Study,
        storage: Any,
        space: dict[str, BaseDistribution],
        fixed: list[str],
        sweep_run: "SweepRun",
    ) -> None:
        """Ask, launch and tell batches of trials until the study's total is reached."""
        failures = 0
        while batch := self._next_batch(study, space, sweep_run):
            overrides = [self._overrides(trial, fixed, sweep_run) for trial in batch]
            self.sweep_dir.mkdir(parents=True, exist_ok=True)
            try:
                self.validate_batch_is_legal(overrides)
            except HydraException:
                for trial in batch:  # no trial of this space can run: stop, leaving none RUNNING
                    study.tell(trial, state=TrialState.FAIL)
                sweep_run.finish(study, best_yaml=None, failed=True)
                raise
            # This process beats for its trials while they run, wherever the launcher runs them.
            with KeepAlive(storage, [t._trial_id for t in batch], self.heartbeat_interval):
                returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
            for trial, result in zip(batch, returns, strict=True):
                told = self._tell(study, trial, result)
                if told is None:
                    continue
                state, outage = told
                sweep_run.mark_trial(trial.number, state, outage)
                failures += state == TrialState.FAIL and outage is None
            if failures > self.max_failures:
                sweep_run.finish(study, best_yaml=None, failed=True)
                raise RuntimeError(
                    f"{failures} trials failed (hydra.sweeper.max_failures={self.max_failures}); "
                    "see their logs under " + str(self.sweep_dir)
                )

    def _next_batch(
        self, study: optuna.Study, space: dict[str, BaseDistribution], sweep_run: "SweepRun"
    ) -> list[optuna.Trial]:
        """The next batch to run; [] once the study holds `n_trials` finished trials. While
        the rest runs in other workers, this one waits: should one of them die, its trial's
        retry is picked up here."""
        waiting_since = None
        while True:
            sweep_run.wait_for_server()  # no trial is asked for while the tracking server is down
            batch, running, lost = retry_storage(lambda: self._ask(study, space))
            for trial in lost:
                sweep_run.mark_lost(trial, self.grace_period)
            if batch or not running:
                return batch
            if waiting_since is None:
                waiting_since = time.monotonic()
                log.info(
                    "Waiting for %d trials running in other workers (one whose worker died is "
                    "failed %d s after its last heartbeat, and retried here)",
                    running,
                    self.grace_period,
                )
            time.sleep(min(WAIT_POLL_S, self.heartbeat_interval))

    def _ask(
        self, study: optuna.Study, space: dict[str, BaseDistribution]
    ) -> tuple[list[optuna.Trial], int, list[LostTrial]]:
        """Up to `n_jobs` trials to run now, the number of trials running elsewhere, and the
        trials found dead (failed here, their retries queued).

        Counted and asked under the study's lock, against the storage, so workers in other
        processes or on other machines add up to exactly `n_trials`. Retries (WAITING) go
        first; a dead trial and its retry count once."""
        with study_lock(self.storage, self.study_name):
            lost = self.lost_trials.fail_dead(study)
            for trial in lost:
                log.warning(
                    "Trial %d lost its worker (no heartbeat for %d s): FAIL, %s",
                    trial.trial.number,
                    self.grace_period,
                    retried_as(trial.retry_number),
                )
            trials = counted_trials(study.get_trials(deepcopy=False))
            finished = sum(t.state in FINISHED for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            # Trials an earlier attempt asked for, before the database dropped: started first.
            size = min(
                self.n_jobs - len(self._asked), waiting + max(self.n_trials - len(trials), 0)
            )
            news = (finished, running, size + len(self._asked))
            if news != self._last_news:
                self._last_news = news
                log.info(
                    "Study %r in %s: %d of %d trials finished, %d running%s",
                    self.study_name,
                    mask_secrets(self.storage),
                    finished,
                    self.n_trials,
                    running,
                    "" if size > 0 else "; nothing left to ask",
                )
            with warnings.catch_warnings():  # Optuna's heartbeat is meant for its own loop
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                for _ in range(size):
                    self._asked.append(study.ask(space))
            for trial in self._asked:  # alive from the start, before its worker's thread beats
                record_heartbeat(study._storage, trial._trial_id)
            batch, self._asked = self._asked, []
        return batch, running, lost

    def _drop_absent_keys(self, space: dict[str, BaseDistribution]) -> dict[str, BaseDistribution]:
        """Leave out keys the composed config lacks, so one search space serves every model;
        `+key` (add), group keys and keys whose value is null are kept. A key that only some
        searched group choices lack is left out per trial (`_present_params`)."""
        kept = {}
        searched_groups = [key for key in space if key in self.config.hydra.runtime.choices]
        for key, distribution in space.items():
            if (
                key.startswith(("+", "~"))
                or key in searched_groups
                or self._has_key(self.config, key)
                or key.split(".")[0] in searched_groups
            ):
                kept[key] = distribution
            else:
                log.warning("%s is not in this config; left out of the search space", key)
        return kept

    @staticmethod
    def _has_key(config: DictConfig, key: str) -> bool:
        return OmegaConf.select(config, key, default=_ABSENT) is not _ABSENT

    def _present_params(self, trial: optuna.Trial, fixed: list[str]) -> dict[str, Any]:
        """The trial's sampled values that its own config has: with `model=choice(a,b)`, a
        `model.dropout` that model a lacks is left out of a's trials (one warning each)."""
        choices = self.config.hydra.runtime.choices
        groups = {key: value for key, value in trial.params.items() if key in choices}
        if not groups:
            return dict(trial.params)
        group_overrides = [format_override(key, value) for key, value in groups.items()]
        composed = self.hydra_context.config_loader.load_sweep_config(
            self.config, [*fixed, *group_overrides]
        )
        present = {}
        for key, value in trial.params.items():
            if key in groups or key.startswith(("+", "~")) or self._has_key(composed, key):
                present[key] = value
            elif (key, tuple(group_overrides)) not in self._warned:
                self._warned.add((key, tuple(group_overrides)))
                log.warning(
                    "%s is not in the config of %s: left out of those trials",
                    key,
                    " ".join(group_overrides),
                )
        return present

    def describe(self) -> dict[str, Any]:
        sweeper = self.config.hydra.sweeper
        return {
            "study_name": self.study_name,
            "storage": mask_secrets(self.storage),
            "direction": self.direction,
            "n_trials": self.n_trials,
            "n_jobs": self.n_jobs,
            "workers": self.workers,
            "max_retries": self.lost_trials.max_retries,
            "sampler": OmegaConf.to_container(sweeper.sampler, resolve=True),
            # pruner=null: every trial runs its full length
            "pruner": sweeper.pruner and OmegaConf.to_container(sweeper.pruner, resolve=True),
        }

    def _overrides(self, trial: optuna.Trial, fixed: list[str], sweep_run: "SweepRun") -> list[str]:
        present = self._present_params(trial, fixed)
        sampled = [format_override(key, value) for key, value in present.items()]
        parent = f",parent_run_id:'{sweep_run.run_id}'" if sweep_run.run_id else ""
        # The storage id (not the number) is what reopens the trial in the job's process.
        marker = f"++sweep={{trial_id:{trial._trial_id},trial_number:{trial.number}{parent}}}"
        return [*fixed, *sampled, "test=false", marker]

    def _tell(
        self, study: optuna.Study, trial: optuna.Trial, result: JobReturn
    ) -> tuple[TrialState, str | None] | None:
        """Record the job's outcome: its state, and for a trial an outage stopped (the
        tracking server or the study's database out of reach for longer than the waits) why
        it was retried instead of charged to `max_failures`. None when another worker had
        already failed the trial as lost (its heartbeat stalled past grace_period): its retry
        stands for it."""
        stored = retry_storage(lambda: study._storage.get_trial(trial._trial_id))
        if stored.state.is_finished():
            log.warning(
                "Trial %d was failed as lost while it ran (no heartbeat for %d s); its result "
                "is dropped and its retry counts instead",
                trial.number,
                self.grace_period,
            )
            return None
        if result.status == JobStatus.COMPLETED:
            value = float(result.return_value)
            retry_storage(lambda: study.tell(trial, value, skip_if_finished=True))
            metric = self.config.optimized_metric
            log.info("Trial %d: %s = %.4f %s", trial.number, metric, value, trial.params)
            return TrialState.COMPLETE, None
        error = result._return_value
        if isinstance(error, optuna.TrialPruned):
            retry_storage(lambda: study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True))
            log.info("Trial %d pruned: %s", trial.number, error)
            return TrialState.PRUNED, None
        message = f"{type(error).__name__}: {error}"[:1000]

        def fail() -> None:
            with contextlib.suppress(UpdateFinishedTrialError):  # failed as lost just now
                trial.set_user_attr("error", message)
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)

        retry_storage(fail)
        if not is_outage(error):
            log.error("Trial %d failed: %s", trial.number, message)
            return TrialState.FAIL, None

        def retry() -> int | None:
            with study_lock(self.storage, self.study_name):
                return self.lost_trials.retry(study, study._storage.get_trial(trial._trial_id))

        outage = f"stopped by an outage ({message}); {retried_as(retry_storage(retry))}"
        log.warning("Trial %d %s, not charged to hydra.sweeper.max_failures", trial.number, outage)
        return TrialState.FAIL, outage

    def _server_wait_s(self) -> float:
        """How long this sweep waits for a tracking server that is down: logger.server_wait_s
        when it logs to MLflow."""
        if not logs_to_mlflow(self.config):
            return 0.0
        return float(self.config.logger.get("server_wait_s") or 0)

    def _write_best(self, study: optuna.Study) -> Path | None:
        """`best.yaml`: the best trial's full config, from the study (every trial records the
        config it ran), with the test split switched back on; any worker can write it."""
        from fer_lab.sweeps.pruning import CONFIG_ATTR

        try:
            best = study.best_trial
        except ValueError:
            return None
        recorded = best.user_attrs.get(CONFIG_ATTR)
        if recorded is None:
            log.warning("Best trial %d recorded no config; no best.yaml", best.number)
            return None
        config = OmegaConf.create(recorded["yaml"])
        # Outside this sweep there are no config-group choices to interpolate from.
        config.names = {"model": recorded["model"], "dataset": recorded["dataset"]}
        config.test = True
        config.sweep = None
        config.experiment_tag = f"best of sweep {self.study_name}"
        config.defaults = ["_self_", {"hydra": "default"}]
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        target = self.sweep_dir / "best.yaml"
        target.write_text(mask_secrets(OmegaConf.to_yaml(config)))
        log.info(
            "Best trial %d (%s = %.4f). Train and test it once with:\n"
            "  python -m fer_lab.train --config-dir %s --config-name best",
            best.number,
            self.config.optimized_metric,
            best.value,
            self.sweep_dir,
        )
        return target
