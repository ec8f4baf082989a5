"""MLflow parent runs that group a multirun: one per Optuna study, one per grid multirun.

Trial and job runs nest under their parent through the `mlflow.parentRunId` tag, so the MLflow
UI shows each sweep as one expandable row.
"""

import atexit
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import optuna
from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from fer_lab.core.errors import FERLabError, StopRequested
from fer_lab.sweeps.heartbeats import LostTrial, counted_trials, retried_numbers
from fer_lab.tracking.mlflow_store import prepare_tracking_store
from fer_lab.tracking.run_identity import (
    FAILURE_REASON_TAG,
    PARENT_RUN_ENV,
    SWEEP_TAG,
    logs_to_mlflow,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fer_lab.tracking.leaderboard import Entry

log = logging.getLogger(__name__)


def publish_leaderboard(client: "MlflowClient", run_id: str) -> list["Entry"]:
    """The parent run's leaderboard; its module (pandas, matplotlib) loads only here."""
    from fer_lab.tracking.leaderboard import publish

    return publish(client, run_id)


class SweepRun:
    """The parent run of a sweep; a no-op when the config logs somewhere other than MLflow.

    Re-running the same Optuna study reuses its parent run, so a resumed sweep stays one group.
    """

    def __init__(self, client: "MlflowClient | None" = None, run_id: str | None = None) -> None:
        self.client = client
        self.run_id = run_id

    @classmethod
    def start(
        cls,
        config: DictConfig,
        study_name: str,
        space: dict[str, BaseDistribution],
        settings: dict[str, Any],
    ) -> "SweepRun":
        if not logs_to_mlflow(config):
            return cls()
        # Only for a sweep: every `python -m` start, which imports this module, stays light.
        from mlflow import MlflowClient

        from fer_lab.tracking.ui_view import add_key_metrics_view

        prepare_tracking_store(config.logger.tracking_uri)
        client = MlflowClient(config.logger.tracking_uri)
        name = config.logger.experiment_name
        experiment = client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else client.create_experiment(name, config.logger.get("artifact_location"))
        )
        add_key_metrics_view(client, experiment_id)
        existing = client.search_runs(
            [experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{study_name}'", max_results=1
        )
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            return cls(client, run_id)
        run = client.create_run(
            experiment_id, run_name=f"sweep {study_name}", tags={SWEEP_TAG: study_name}
        )
        for key, value in settings.items():
            client.log_param(run.info.run_id, f"sweep/{key}", value)
        for key, distribution in space.items():
            client.log_param(run.info.run_id, f"space/{key}", repr(distribution)[:500])
        return cls(client, run.info.run_id)

    def _trial_run(self, number: int) -> str | None:
        runs = self.client.search_runs(
            [self.client.get_run(self.run_id).info.experiment_id],
            filter_string=(
                f"tags.`mlflow.parentRunId` = '{self.run_id}' and tags.`optuna.trial` = '{number}'"
            ),
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def mark_trial(self, number: int, state: TrialState) -> None:
        """Tag the trial's run with its Optuna state; a pruned run ends as KILLED."""
        if self.client is None:
            return
        run_id = self._trial_run(number)
        if run_id is None:  # the trial failed before its run was created
            return
        self.client.set_tag(run_id, "optuna.trial_state", state.name)
        if state == TrialState.PRUNED:
            self.client.set_terminated(run_id, status="KILLED")
        elif state == TrialState.FAIL:
            self.client.set_terminated(run_id, status="FAILED")

    def mark_lost(self, lost: LostTrial, grace_period: int) -> None:
        """End the run of a trial whose worker died as KILLED, saying why and what became of
        it (the leaderboard shows it KILLED, with the reason)."""
        if self.client is None:
            return
        run_id = self._trial_run(lost.trial.number)
        if run_id is None:  # it died before its run was created
            return
        retry = (
            f"retried as trial {lost.retry_number}"
            if lost.retry_number is not None
            else "not retried (hydra.sweeper.max_retries used up)"
        )
        reason = f"its worker died (no heartbeat for {grace_period} s); {retry}"
        self.client.set_tag(run_id, "optuna.trial_state", TrialState.FAIL.name)
        self.client.set_tag(run_id, FAILURE_REASON_TAG, reason)
        self.client.set_terminated(run_id, status="KILLED")

    def finish(self, study: optuna.Study, best_yaml: Path | None, failed: bool = False) -> None:
        if self.client is None:
            return
        every = study.get_trials(deepcopy=False)
        trials = counted_trials(every)
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            count = sum(t.state == state for t in trials)
            self.client.log_metric(self.run_id, f"trials/{state.name.lower()}", count)
        self.client.log_metric(self.run_id, "trials/retried", len(retried_numbers(every)))
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        if completed:
            best = study.best_trial
            self.client.log_metric(self.run_id, "best/value", best.value)
            self.client.set_tag(self.run_id, "best.trial", str(best.number))
            for key, value in best.params.items():
                self.client.set_tag(self.run_id, f"best.{key}", str(value))
            self._log_plots(study, len(completed))
        if best_yaml is not None:
            self.client.log_artifact(self.run_id, str(best_yaml))
        publish_leaderboard(self.client, self.run_id)
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def _log_plots(self, study: optuna.Study, completed: int) -> None:
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as plots

        wanted = {"optimization_history.png": plots.plot_optimization_history}
        if completed >= 2 and study.best_trial.params:
            wanted["param_importances.png"] = plots.plot_param_importances
        with tempfile.TemporaryDirectory() as tmp:
            for name, plot in wanted.items():
                try:
                    axes = plot(study)
                except (ValueError, RuntimeError) as error:
                    log.warning("No %s: %s", name, error)
                    continue
                path = Path(tmp) / name
                axes.figure.savefig(path, dpi=120, bbox_inches="tight")
                plt.close(axes.figure)
                self.client.log_artifact(self.run_id, str(path), "sweep")


class GroupGridRuns(Callback):
    """Hydra callback: a plain multirun (`-m model=a,b`) gets one MLflow parent run.

    Optuna sweeps make their own parent run (per study), so they are left alone here. A grid
    that ends early (Ctrl-C, SIGTERM, a failed job) never reaches `on_multirun_end`: its parent
    run is closed on the way out of the process instead, KILLED (FAILED if a job failed), with
    the leaderboard of the jobs that ran.
    """

    def __init__(self) -> None:
        self.sweep_run = SweepRun()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper._target_.endswith("OptunaSweeper"):
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            self.sweep_run = SweepRun.start(
                config, f"grid {sweep_dir.name}", {}, {"dir": str(sweep_dir)}
            )
        except FERLabError as error:  # a tracking server that is down or refuses this login
            log.error("%s", error)
            sys.exit(2)
        if self.sweep_run.run_id:
            os.environ[PARENT_RUN_ENV] = self.sweep_run.run_id
            atexit.register(self._close, None)
            # SIGTERM's default action ends the process without running atexit handlers.
            if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _stop_on_sigterm)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._close("FINISHED")

    def _close(self, status: str | None) -> None:
        """Publish the leaderboard and end the parent run, once; `None`: the grid ended early."""
        client, run_id = self.sweep_run.client, self.sweep_run.run_id
        if client is None:
            return
        self.sweep_run = SweepRun()
        atexit.unregister(self._close)
        os.environ.pop(PARENT_RUN_ENV, None)
        entries = publish_leaderboard(client, run_id)
        if status is None:
            failed = any(entry.status == "FAILED" for entry in entries)
            status = "FAILED" if failed else "KILLED"
            log.warning("The grid ended before its last job: parent run %s is %s", run_id, status)
        client.set_terminated(run_id, status=status)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signum)
