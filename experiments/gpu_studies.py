"""Every study at its full recipe on one GPU, in one command sized for a short GPU allocation.

    python experiments/gpu_studies.py --out gpu_studies --fer2013 ../shared/data/fer2013.csv.gz
    python experiments/gpu_studies.py --out gpu_studies --fer2013 ... --gpu-check  # check first
    python experiments/gpu_studies.py --out DIR --tiny    # the whole sequence on a CPU, tiny
    python experiments/gpu_studies.py --out DIR --fer2013 ... --dry-run   # the plan, nothing run

What runs, each as its own `python -m fer_lab.train` process, `--jobs` at a time on the one
device, longest first: `experiment=fer_lab_best` with three seeds (100 epochs; each then scored
with ten-crop by `python -m fer_lab.eval`), and seed003's six networks, its model 6
(`augmentation=hflip`) and its cross-entropy variant (`loss=cross_entropy` for convnet1 and
convnet5, as conf/experiment/seed003.yaml names it) at 200 epochs. `--gpu-check` first runs
`python -m fer_lab.gpu_check` alone on the device (its timings must not share the GPU).

Everything the runs write (run folders, checkpoints, MLflow artifacts, the live MLflow store,
each process's output) goes under `--workdir` (default logs/gpu_studies). `--out` gets only
what the results table needs, small enough to copy back from a GPU node: `mlflow.db`, a
consistent copy of the store (runs, params, metrics, tags; no artifacts), refreshed whenever a
job ends and every `--snapshot-s` seconds; `manifest.json`, every job's command, status, exit
code and wall time, the MLflow run it made and the hardware, rewritten at every change; and
the check's `gpu_check.json`/`.md`. So a command cut off at any point leaves what had finished.

`--budget-s` bounds the whole command: before it ends, the running jobs get SIGTERM (fer_lab
stops after the current batch and marks the MLflow run KILLED; its run folder can continue)
and the command exits with 75. The same command again continues: finished jobs are skipped,
stopped runs go on from their last epoch in their own MLflow runs (if the workdir is still
there), and a workdir without a store starts from `--out`'s copy.

Then: `python experiments/results_table.py --tracking-uri sqlite:///<out>/mlflow.db`.
"""

import argparse
import contextlib
import datetime
import fnmatch
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

# (job name, overrides) of seed003 after conf/experiment/seed003.yaml, largest network first.
SEED003 = [
    ("seed003-convnet1", ["model=convnet1"]),
    ("seed003-convnet1-cross_entropy", ["model=convnet1", "loss=cross_entropy"]),
    ("seed003-convnet2", ["model=convnet2"]),
    ("seed003-convnet3", ["model=convnet3"]),
    ("seed003-convnet5", ["model=convnet5"]),
    ("seed003-convnet5-cross_entropy", ["model=convnet5", "loss=cross_entropy"]),
    ("seed003-model6", ["augmentation=hflip"]),  # convnet5 with mirrored training images
    ("seed003-convnet4", ["model=convnet4"]),
    ("seed003-convnet0", ["model=convnet0"]),
]
# A few batches of tiny synthetic faces on the CPU: every step of the sequence, in seconds.
TINY_TRAINING = [
    "dataset.train_per_class=4",
    "dataset.val_per_class=2",
    "dataset.test_per_class=2",
    "data.batch_size=4",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "+trainer.num_sanity_val_steps=0",
]
TINY_GPU_CHECK = ["--epochs", "1", "--batch-size", "16", "--bench-warmup", "1"]
TINY_GPU_CHECK += ["--bench-steps", "2", "--sweep-trials", "2", "--sweep-epochs", "1"]
STATE_FILE = "run_state.json"  # what fer_lab/training/resume.py keeps in each run folder
EXIT_BUDGET = 75  # EX_TEMPFAIL: stopped by the budget; the same command continues


@dataclass
class Job:
    """One process of the sequence and what the manifest says about it."""

    name: str
    kind: str  # train, eval (ten-crop of a training job's best checkpoint) or gpu_check
    module: str
    arguments: list[str]
    folder: Path  # the run folder (hydra.run.dir) or the check's --out
    scores: str | None = None  # an eval job's training job
    timeout_s: float | None = None
    record: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started: float = 0.0
    terminated: float | None = None  # when it was sent SIGTERM

    def terminate(self) -> None:
        """SIGTERM to the job's process group (the check's steps too), once."""
        if self.process is not None and self.terminated is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            self.terminated = time.monotonic()

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.arguments]


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the folder to copy back")
    parser.add_argument("--workdir", type=Path, default=Path("logs/gpu_studies"), help="the rest")
    parser.add_argument("--fer2013", type=Path, help="FER2013 CSV (not needed with --tiny)")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--jobs", type=int, default=8, help="processes at once on the device")
    parser.add_argument("--budget-s", type=float, default=540, help="the whole command")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="fer_lab_best's")
    parser.add_argument("--seed003-epochs", type=int, help="default: the recipe's 200")
    parser.add_argument("--best-epochs", type=int, help="default: the recipe's 100")
    parser.add_argument("--only", nargs="+", metavar="PATTERN", help="training jobs to run")
    parser.add_argument("--no-tencrop", action="store_true", help="no ten-crop eval")
    parser.add_argument("--gpu-check", action="store_true", help="python -m fer_lab.gpu_check")
    parser.add_argument("--gpu-check-budget-s", type=float, default=240)
    parser.add_argument("--snapshot-s", type=float, default=60, help="store copy interval")
    parser.add_argument("--stop-grace-s", type=float, default=45, help="SIGTERM to SIGKILL")
    # A job started with less time left would only load its data before it is stopped.
    parser.add_argument("--min-start-s", type=float, default=60, help="time left to start a job")
    parser.add_argument("--tiny", action="store_true", help="CPU, synthetic faces, 1 epoch")
    parser.add_argument("--dry-run", action="store_true", help="write the plan, run nothing")
    args = parser.parse_args(argv)
    if args.tiny:
        args.device = "cpu"
        args.seed003_epochs = args.best_epochs = 1
    elif args.fer2013 is None or not args.fer2013.is_file():
        parser.error(f"--fer2013 {args.fer2013}: no such file (the studies need FER2013; --tiny)")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    given = sys.argv[1:] if argv is None else argv
    args.command = shlex.join(["python", "experiments/gpu_studies.py", *given])
    return args


def plan(args: argparse.Namespace) -> list[Job]:
    """The jobs in the order they start."""
    runs = args.workdir.resolve() / "runs"
    data = ["dataset=synthetic", *TINY_TRAINING] if args.tiny else []
    data = data or [f"dataset.path={args.fer2013.resolve()}"]
    device = ["trainer=gpu" if args.device == "cuda" else "trainer=cpu"]

    def train(name: str, overrides: list[str], epochs: int | None) -> Job:
        """A training job; shorter than the recipe, it gets a run folder of its own."""
        length = [] if epochs is None else [f"trainer.max_epochs={epochs}"]
        folder = runs / (name if epochs is None else f"{name}-{epochs}epochs")
        arguments = [*overrides, *device, *data, *length, f"hydra.run.dir={folder}"]
        return Job(name, "train", "fer_lab.train", arguments, folder)

    training = [
        train(
            f"fer_lab_best-seed{seed}",
            ["experiment=fer_lab_best", f"seed={seed}"],
            args.best_epochs,
        )
        for seed in args.seeds
    ]
    training += [
        train(name, ["experiment=seed003", *overrides], args.seed003_epochs)
        for name, overrides in SEED003
    ]
    if args.only:
        training = [j for j in training if any(fnmatch.fnmatch(j.name, p) for p in args.only)]
    jobs = []
    if args.gpu_check:
        check = args.workdir.resolve() / "gpu_check"
        options = ["--device", args.device, "--budget-s", str(args.gpu_check_budget_s)]
        options += ["--out", str(check)]
        options += TINY_GPU_CHECK + TINY_TRAINING if args.tiny else []
        options += [] if args.tiny else ["--fer2013", str(args.fer2013.resolve())]
        # The check sizes its steps to its budget; the margin covers its processes' start-ups.
        timeout = args.gpu_check_budget_s + 120
        jobs.append(
            Job("gpu-check", "gpu_check", "fer_lab.gpu_check", options, check, None, timeout)
        )
    for job in training:
        jobs.append(job)
        if job.name.startswith("fer_lab_best") and not args.no_tencrop:
            folder = runs / f"{job.name}-tencrop"
            options = ["tta=tencrop", "device=auto", f"hydra.run.dir={folder}"]
            # ckpt_path, the job's best checkpoint, is added when the eval starts.
            options += ["data.num_workers=0"] if args.tiny else []
            jobs.append(
                Job(f"{job.name}-tencrop", "eval", "fer_lab.eval", options, folder, job.name)
            )
    return jobs


def best_checkpoint(run_folder: Path) -> Path | None:
    """The checkpoint the run chose on its validation split (fer_lab keeps the top one)."""
    found = sorted(
        (run_folder / "checkpoints").glob("epoch*.ckpt"), key=lambda p: p.stat().st_mtime
    )
    return found[-1] if found else None


def run_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite store that others are writing (SQLite's backup API, one
    step), as one self-contained file (rollback journal, not WAL), put in place atomically."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source, timeout=60)) as db,
        contextlib.closing(sqlite3.connect(partial)) as copy,
    ):
        db.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")
    partial.replace(target)


def probe_hardware() -> dict[str, Any]:
    """The device the runs train on, as their MLflow `hardware` tag names it, and the software,
    read in a child process so this one holds no GPU context."""
    code = (
        "import json, platform, torch\n"
        "from fer_lab.tracking.provenance import describe_hardware, git_commit\n"
        "print(json.dumps({'hardware': describe_hardware(), 'torch': torch.__version__,\n"
        "    'cuda': torch.version.cuda, 'python': platform.python_version(),\n"
        "    'platform': platform.platform(), 'git_commit': git_commit()}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    found: dict[str, Any] = {"cpu_count": os.cpu_count()}
    if done.returncode == 0:
        found |= json.loads(done.stdout.splitlines()[-1])
    else:
        found["probe_error"] = done.stderr[-2000:]
    with contextlib.suppress(OSError):
        query = "--query-gpu=name,driver_version,memory.total"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True
        )
        if smi.returncode == 0:
            found["gpus"] = smi.stdout.strip().splitlines()
    return found


class Studies:
    """Runs the jobs with at most `--jobs` at once, keeping `--out` up to date."""

    def __init__(
        self,
        jobs: list[Job],
        args: argparse.Namespace,
        probe: Callable[[], dict[str, Any]] = probe_hardware,
    ) -> None:
        self.jobs = jobs
        self.args = args
        self.probe = probe
        self.out = args.out.resolve()
        self.workdir = args.workdir.resolve()
        self.store = self.workdir / "mlflow.db"
        self.began = time.monotonic()
        self.stop_at = self.began + args.budget_s - args.stop_grace_s
        self.stopping: str | None = None  # why the running jobs were told to stop
        self.out_of_time = False  # too little left to start another job
        self.last_copy = self.began
        previous = self._previous_manifest()
        self.manifest: dict[str, Any] = {
            "command": args.command,
            "started": now_iso(),
            "budget_s": args.budget_s,
            "jobs_at_once": args.jobs,
            "data": "synthetic (--tiny)" if args.tiny else f"FER2013 ({args.fer2013.name})",
            "device": args.device,
            "workdir": str(self.workdir),
            "store": "mlflow.db",
            "results_table": "python experiments/results_table.py --tracking-uri "
            f"sqlite:///{self.out / 'mlflow.db'}",
            "status": "planned" if args.dry_run else "running",
            "jobs": [],
        }
        by_name = {job.name: job for job in jobs}
        for job in jobs:  # an eval after its training job
            shown = job.arguments
            if job.scores is not None:
                shown = [f"ckpt_path=<the best checkpoint of {job.scores}>", *shown]
            command = shlex.join(["python", "-m", job.module, *shown])
            before = previous.get(job.name, {})
            if job.scores is None and before.get("command") != command:
                before = {}  # another command, under the same name
            job.record = {
                "name": job.name,
                "kind": job.kind,
                "command": command,
                "status": "planned" if args.dry_run else "pending",
                "attempts": before.get("attempts", []),
            }
            if job.scores is not None:  # done if what it scored still stands
                done = by_name[job.scores].record["status"] == "finished"
                done = done and before.get("status") == "finished"
            else:  # fer_lab's record of the run folder, or the manifest (a fresh workdir)
                state = run_state(job.folder).get("status") if job.kind == "train" else None
                done = before.get("status") == "finished" or state == "finished"
            if done:
                job.record = {**job.record, **before, "status": "finished"}
            self.manifest["jobs"].append(job.record)

    def _previous_manifest(self) -> dict[str, dict[str, Any]]:
        """The last manifest: --out's, else the workdir's (--out may be a fresh folder)."""
        for folder in (self.out, self.workdir):
            if (folder / "manifest.json").is_file():
                jobs = json.loads((folder / "manifest.json").read_text()).get("jobs", [])
                return {job["name"]: job for job in jobs}
        return {}

    def save(self) -> None:
        self.manifest["updated"] = now_iso()
        self.manifest["elapsed_s"] = round(time.monotonic() - self.began, 1)
        text = json.dumps(self.manifest, indent=2) + "\n"
        for folder in (self.out, self.workdir):
            write_atomically(folder / "manifest.json", text)

    def copy_store(self) -> None:
        if self.store.is_file():
            copy_store(self.store, self.out / "mlflow.db")
        self.last_copy = time.monotonic()

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.save()
        if self.args.dry_run:
            print("\n".join(job.record["command"] for job in self.jobs))
            return 0
        if not self.store.is_file() and (self.out / "mlflow.db").is_file():
            copy_store(self.out / "mlflow.db", self.store)  # a rerun on a fresh machine
        self.manifest |= self.probe()
        self.save()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{self.store}"}
        threads = str(max(1, (os.cpu_count() or 1) // self.args.jobs))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # jobs share the cores
            env.setdefault(name, threads)
        check = [j for j in self.jobs if j.kind == "gpu_check" and j.record["status"] == "pending"]
        for job in check:  # alone, before anything else shares the device
            self._start(job, env)
            self._wait_for([job])
        self._wait_for([j for j in self.jobs if j.kind != "gpu_check"], env)
        self.copy_store()
        statuses = {job.record["status"] for job in self.jobs}
        if statuses <= {"finished"}:
            self.manifest["status"] = "finished"
        elif "failed" in statuses or "skipped" in statuses:
            self.manifest["status"] = "failed"
        else:
            reason = self.stopping or "budget"
            self.manifest["status"] = f"stopped ({reason}): the same command goes on"
        self.save()
        print(json.dumps({job.name: job.record["status"] for job in self.jobs}, indent=2))
        print(f"manifest: {self.out / 'manifest.json'}\nstore: {self.out / 'mlflow.db'}")
        if self.manifest["status"] == "finished":
            return 0
        return 1 if self.manifest["status"] == "failed" else EXIT_BUDGET

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop(signal.Signals(signum).name)

    def _stop(self, reason: str) -> None:
        if self.stopping is None:
            self.stopping = reason
            for job in self.jobs:
                job.terminate()

    def _wait_for(self, jobs: list[Job], env: dict[str, str] | None = None) -> None:
        """Start `jobs` as slots free up (an eval once its training job has finished) and
        record each as it ends, until none is pending or running."""
        grace = self.args.stop_grace_s
        while True:
            clock = time.monotonic()
            if clock >= self.stop_at:
                self._stop(f"budget of {self.args.budget_s:g} s")
            for job in jobs:
                if job.process is None:
                    continue
                if job.process.poll() is not None:
                    self._finish(job)
                elif job.timeout_s is not None and clock > job.started + job.timeout_s:
                    job.record["reason"] = f"timed out after {job.timeout_s:g} s"
                    job.terminate()
                if job.terminated is not None and clock > job.terminated + grace:
                    job.kill()
            if env is not None:
                self._start_ready(jobs, env)
            if not any(j.process is not None or j.record["status"] == "pending" for j in jobs):
                return
            if clock - self.last_copy >= self.args.snapshot_s:
                self.copy_store()
            time.sleep(0.2)

    def _start_ready(self, jobs: list[Job], env: dict[str, str]) -> None:
        by_name = {job.name: job for job in self.jobs}
        left = self.stop_at - time.monotonic()
        self.out_of_time = self.out_of_time or left < self.args.min_start_s
        for job in jobs:
            if job.record["status"] != "pending":
                continue
            if self.stopping or self.out_of_time:
                self._mark(job, "not started")
                continue
            if job.scores is not None:
                trained = by_name[job.scores].record["status"]
                if trained in ("pending", "running"):
                    continue
                checkpoint = best_checkpoint(by_name[job.scores].folder)
                if trained in ("stopped", "not started"):
                    self._mark(job, "not started")
                    continue
                if trained != "finished" or checkpoint is None:
                    self._mark(job, "skipped", f"{job.scores} is {trained}, no best checkpoint")
                    continue
                job.arguments = [f"ckpt_path={checkpoint}", *job.arguments]
                job.record["command"] = shlex.join(["python", "-m", job.module, *job.arguments])
            if sum(j.process is not None for j in self.jobs) >= self.args.jobs:
                return
            self._start(job, env)

    def _mark(self, job: Job, status: str, reason: str | None = None) -> None:
        job.record["status"] = status
        if reason:
            job.record["reason"] = reason
        self.save()

    def _start(self, job: Job, env: dict[str, str]) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{job.name}.log"
        with log.open("a") as output:
            # A process group of its own: a stop reaches the job and whatever it started.
            job.process = subprocess.Popen(
                job.command(),
                cwd=self.workdir,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        job.started, job.terminated = time.monotonic(), None
        job.record |= {"status": "running", "log": str(log.relative_to(self.workdir))}
        job.record["attempts"].append({"started": now_iso()})
        self.save()

    def _finish(self, job: Job) -> None:
        assert job.process is not None
        code = job.process.returncode
        job.process = None
        wall = round(time.monotonic() - job.started, 1)
        stopped = self.stopping is not None and code != 0 and "reason" not in job.record
        status = "finished" if code == 0 else "stopped" if stopped else "failed"
        job.record["attempts"][-1] |= {"exit_code": code, "wall_s": wall, "status": status}
        job.record |= {"status": status, "exit_code": code, "wall_s": wall}
        job.record["wall_s_all_attempts"] = round(
            sum(a.get("wall_s", 0) for a in job.record["attempts"]), 1
        )
        if job.kind == "train":
            job.record["mlflow_run_id"] = run_state(job.folder).get("mlflow_run_id")
        if job.kind == "gpu_check":
            for name in ("gpu_check.json", "gpu_check.md"):
                if (job.folder / name).is_file():
                    write_atomically(self.out / name, (job.folder / name).read_text())
        if status == "failed":
            text = (self.workdir / job.record["log"]).read_text(errors="replace")
            job.record["output_tail"] = text[-4000:]
        self.copy_store()
        self.save()


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    return Studies(plan(args), args).run()


if __name__ == "__main__":
    sys.exit(main())
