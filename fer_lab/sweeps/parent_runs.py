"""MLflow parent runs that group a multirun: one per Optuna study, one per grid multirun.

Trial and job runs nest under their parent through the `mlflow.parentRunId` tag, so the MLflow
UI shows each sweep as one expandable row.
"""

import atexit
import logging
import os
import shutil
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

import optuna
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from fer_lab.core.errors import FERLabError, StopRequested
from fer_lab.core.secrets import mask_secrets
from fer_lab.sweeps.heartbeats import LostTrial, counted_trials, retried_as, retried_numbers
from fer_lab.tracking.mlflow_store import (
    is_connectivity_error,
    prepare_tracking_store,
    wait_for_server,
)
from fer_lab.tracking.replay import UNDELIVERED_FILE
from fer_lab.tracking.run_identity import (
    FAILURE_REASON_TAG,
    PARENT_RUN_ENV,
    SWEEP_TAG,
    logs_to_mlflow,
    run_url,
)
from fer_lab.tracking.run_names import (
    SHARED_TAG,
    publish_swept_keys,
    shared_overrides,
    swept_keys,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fer_lab.tracking.deliveries import ParentRunDeliveries
    from fer_lab.tracking.leaderboard import Entry

log = logging.getLogger(__name__)
HTTP = ("http", "https")
T = TypeVar("T")


def publish_leaderboard(client: "MlflowClient", run_id: str) -> list["Entry"]:
    """The parent run's leaderboard; its module (pandas, matplotlib) loads only here."""
    from fer_lab.tracking.leaderboard import publish

    return publish(client, run_id)


class SweepRun:
    """The parent run of a sweep; a no-op when the config logs somewhere other than MLflow.

    Re-running the same Optuna study reuses its parent run, so a resumed sweep stays one group.
    Its deliveries wait out a server outage (ParentRunDeliveries, in `folder`), for up to
    `server_wait_s` when the sweep ends.
    """

    def __init__(
        self,
        client: "MlflowClient | None" = None,
        run_id: str | None = None,
        deliveries: "ParentRunDeliveries | None" = None,
        folder: Path | None = None,
        server_wait_s: float = 0.0,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.deliveries = deliveries
        self.folder = folder
        self.server_wait_s = server_wait_s
        self.adopted: list[Path] = []  # dead processes' folders whose items this one took

    @classmethod
    def start(
        cls,
        config: DictConfig,
        study_name: str,
        space: dict[str, BaseDistribution],
        settings: dict[str, Any],
        server_wait_s: float = 0.0,
    ) -> "SweepRun":
        """Find or create the parent run, waiting up to `server_wait_s` for a server that is
        down (call under the study's lock, so that workers share one)."""
        if not logs_to_mlflow(config):
            return cls()
        # Only for a sweep: every `python -m` start, which imports this module, stays light.
        from mlflow import MlflowClient

        from fer_lab.tracking.deliveries import ParentRunDeliveries

        uri = config.logger.tracking_uri
        prepare_tracking_store(uri, wait_s=server_wait_s)
        client = MlflowClient(uri)
        run_id = retry_when_unreachable(
            lambda: cls._parent_run(client, config, study_name, space, settings), server_wait_s
        )
        # One folder per process: the files its deliveries point to, and what they could not
        # deliver yet.
        folder = (
            Path(config.hydra.sweep.dir) / "mlflow_parent" / f"{socket.gethostname()}-{os.getpid()}"
        )
        deliveries = ParentRunDeliveries(
            client,
            folder / UNDELIVERED_FILE,
            config.logger.get("retry_interval_s", 30),
            resume=False,
        )
        return cls(client, run_id, deliveries, folder, server_wait_s)

    def adopt_dead_workers(self) -> None:
        """Take over what this host's other processes of the sweep left undelivered when
        they died (SIGKILL, an OOM kill): their items go first, so nothing they buffered is
        lost; their folders go once this process's deliveries have drained. Their parent-run
        status and leaderboard are left out: this process ends the run with its own. Call
        under the study's lock, so that one process takes each folder: at the start, and
        before finishing, for workers that died meanwhile."""
        if self.folder is None:
            return
        host = socket.gethostname()
        for other in sorted(self.folder.parent.glob(f"{host}-*")):
            pid = other.name[len(host) + 1 :]  # digits only: not another host's, named host-x
            left = other / UNDELIVERED_FILE
            if not left.is_file() or not pid.isdigit() or _process_alive(int(pid)):
                continue
            taken = self.deliveries.adopt(left, leave_out=frozenset({"status", "leaderboard"}))
            if taken:
                log.info(
                    "%d MLflow deliveries a dead sweep process left in %s go first", taken, other
                )
            self.adopted.append(other)
        if self.deliveries.pending:
            self.deliveries.flush(force=True)

    @staticmethod
    def _parent_run(
        client: "MlflowClient",
        config: DictConfig,
        study_name: str,
        space: dict[str, BaseDistribution],
        settings: dict[str, Any],
    ) -> str:
        from mlflow.entities import Param

        from fer_lab.tracking.ui_view import add_key_metrics_view

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
            return run_id
        command_line = [mask_secrets(o) for o in _command_line(config)]
        shared = shared_overrides(command_line, swept_keys(command_line, space))
        run = client.create_run(
            experiment_id,
            run_name=f"sweep {study_name}",
            tags={SWEEP_TAG: study_name, SHARED_TAG: " ".join(shared) or "(none)"},
        )
        params = [Param(f"sweep/{key}", str(value)) for key, value in settings.items()]
        params += [Param(f"space/{key}", repr(d)[:500]) for key, d in space.items()]
        client.log_batch(run.info.run_id, params=params)
        return run.info.run_id

    def wait_for_server(self) -> None:
        """Return once the tracking server answers (up to `server_wait_s`), with what this
        sweep could not deliver sent; a no-op for a local store."""
        if self.client is None or urlparse(self.client.tracking_uri).scheme not in HTTP:
            return
        wait_for_server(self.client.tracking_uri, self.server_wait_s)
        self.deliveries.flush()

    def mark_trial(self, number: int, state: TrialState, reason: str | None = None) -> None:
        """Tag the trial's run with its Optuna state: a pruned run ends KILLED, a failed one
        FAILED, one with a `reason` (its worker died, an outage stopped it: it was retried)
        KILLED, the reason in a tag."""
        if self.client is None:
            return
        tags = [["optuna.trial_state", state.name]]
        status = {TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}.get(state)
        if reason is not None:
            tags.append([FAILURE_REASON_TAG, reason[:5000]])
            status = "KILLED"
        item = {"run_id": self.run_id, "kind": "trial", "trial": number, "tags": tags}
        self.deliveries.deliver({**item, "status": status})

    def mark_lost(self, lost: LostTrial, grace_period: int) -> None:
        """End the run of a trial whose worker died as KILLED, saying why and what became of
        it (the leaderboard shows it KILLED, with the reason)."""
        reason = (
            f"its worker died (no heartbeat for {grace_period} s); {retried_as(lost.retry_number)}"
        )
        self.mark_trial(lost.trial.number, TrialState.FAIL, reason)

    def finish(self, study: optuna.Study, best_yaml: Path | None, failed: bool = False) -> None:
        """Counts, best trial, plots, best.yaml, leaderboard and the final status; waits up to
        `server_wait_s` for a server that is down to take them (else they stay in the file)."""
        if self.client is None:
            return
        finishing = time.time()
        every = study.get_trials(deepcopy=False)
        trials = counted_trials(every)
        now = int(finishing * 1000)
        metrics = [
            [f"trials/{state.name.lower()}", sum(t.state == state for t in trials), now, 0]
            for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        ]
        metrics.append(["trials/retried", len(retried_numbers(every)), now, 0])
        tags = []
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        if completed:
            best = study.best_trial
            metrics.append(["best/value", best.value, now, 0])
            tags = [["best.trial", str(best.number)]]
            tags += [[f"best.{key}", str(value)] for key, value in best.params.items()]
        self._deliver({"kind": "batch", "metrics": metrics, "tags": tags})
        for path in self._plots(study, len(completed)):
            self._deliver({"kind": "artifact", "path": str(path), "artifact_path": "sweep"})
        if best_yaml is not None:
            self._deliver({"kind": "artifact", "path": str(best_yaml), "artifact_path": None})
        # Every trial of the study is final by now: a board written since shows them all.
        self._deliver({"kind": "leaderboard", "written_after": finishing})
        self._deliver({"kind": "status", "status": "FAILED" if failed else "FINISHED"})
        if self.deliveries.drain(self.server_wait_s):
            for folder in (self.folder, *self.adopted):  # their files reached the server
                shutil.rmtree(folder, ignore_errors=True)
            self._print_standings()
        else:
            log.warning(
                "The sweep's parent run %s did not get %d MLflow deliveries (%s): the server "
                "stayed unreachable; they are kept in %s",
                self.run_id,
                len(self.deliveries.pending),
                self.client.tracking_uri,
                self.deliveries.path,
            )

    def _deliver(self, item: dict[str, Any]) -> None:
        self.deliveries.deliver({"run_id": self.run_id, **item})

    def _print_standings(self) -> None:
        """The sweep's best trials and its parent run's page, as its last lines."""
        from fer_lab.tracking.leaderboard import children_of, leaderboard, standings

        entries = leaderboard(self.client, children_of(self.client, self.run_id))
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        url = run_url(self.client.tracking_uri, experiment_id, self.run_id)
        log.info("\n%s", standings(entries, url))

    def _plots(self, study: optuna.Study, completed: int) -> list[Path]:
        """The study's plots, as files in this process's folder (they may wait for upload)."""
        if not completed:
            return []
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as plots

        wanted = {"optimization_history.png": plots.plot_optimization_history}
        if completed >= 2 and study.best_trial.params:
            wanted["param_importances.png"] = plots.plot_param_importances
        folder = self.folder / "sweep"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, plot in wanted.items():
            try:
                with warnings.catch_warnings():  # "experimental" since Optuna 2.2
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    axes = plot(study)
            except (ValueError, RuntimeError) as error:
                log.warning("No %s: %s", name, error)
                continue
            path = folder / name
            axes.figure.savefig(path, dpi=120, bbox_inches="tight")
            plt.close(axes.figure)
            paths.append(path)
        return paths


def retry_when_unreachable(action: Callable[[], T], wait_s: float) -> T:
    """`action()`, tried again while the tracking store is unreachable, for up to `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return action()
        except Exception as error:
            if not is_connectivity_error(error) or time.monotonic() >= deadline:
                raise
            log.warning("MLflow store unreachable (%s); trying again", error)
            time.sleep(2.0)


class GroupGridRuns(Callback):
    """Hydra callback: a plain multirun (`-m model=a,b`) gets one MLflow parent run.

    Optuna sweeps make their own parent run (per study), so they are left alone here. A grid
    that ends early (Ctrl-C, SIGTERM, a failed job) never reaches `on_multirun_end`: its parent
    run is closed on the way out of the process instead, KILLED (FAILED if a job failed), with
    the leaderboard of the jobs that ran.
    """

    def __init__(self) -> None:
        self.sweep_run = SweepRun()
        self.tracking_uri = ""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper._target_.endswith("OptunaSweeper"):
            return
        publish_swept_keys(swept_keys(_command_line(config)))
        self.tracking_uri = str(config.logger.get("tracking_uri"))
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
        from fer_lab.tracking.leaderboard import standings  # with MLflow, as publish

        experiment_id = client.get_run(run_id).info.experiment_id
        log.info("\n%s", standings(entries, run_url(self.tracking_uri, experiment_id, run_id)))


def _command_line(config: DictConfig) -> list[str]:
    """The multirun's overrides as typed (unresolved: a value may hold an interpolation)."""
    return [str(o) for o in OmegaConf.to_container(config.hydra.overrides.task, resolve=False)]


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    return True


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signum)
