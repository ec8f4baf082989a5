"""One launch per run folder: the process that trains a run holds `run.lock` in its folder,
so a second command (`resume=auto`, the same `hydra.run.dir`) cannot train into it as well.

A launch is one command, which under DDP is several processes (ranks). Rank zero takes the
lock (an OS file lock, released when the process ends, however it ends) and writes who holds
it; the other ranks of the same launch recognise it by the launch id, so they follow rank
zero into the folder instead of being turned away.
"""

import fcntl
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pytorch_lightning.utilities.rank_zero import rank_zero_only

from fer_lab.core.errors import ConfigError

LOCK_FILE = "run.lock"
# Rank zero's launch id, inherited by the ranks Lightning starts by re-running the command.
LAUNCH_ENV = "FER_LAB_LAUNCH_ID"
# How long a rank > 0 waits for its rank zero to take over a lock a dead launch left.
FOLLOW_TIMEOUT_S = 30.0


class RunInUseError(ConfigError):
    """Another live command is training this run."""


def is_rank_zero() -> bool:
    """Whether this is the launch's first process, known from the launcher's environment
    before any process group exists (on a node after the first, NODE_RANK says so)."""
    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def launch_id() -> str:
    """The same string in every rank of one launch, another in every other launch."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:
        return f"slurm-{env['SLURM_JOB_ID']}.{env['SLURM_STEP_ID']}"
    where = f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
    if "TORCHELASTIC_RUN_ID" in env:
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}-{where}"
    if int(env.get("LOCAL_RANK", "0")) > 0 and env.get(LAUNCH_ENV):
        return env[LAUNCH_ENV]  # a rank that this node's rank zero started (Lightning)
    if "NODE_RANK" in env and "MASTER_PORT" in env:  # Lightning's nodes started by hand
        env[LAUNCH_ENV] = f"nodes-{where}"
    else:
        # Set before Lightning starts this node's other ranks, which inherit it; any value
        # inherited from elsewhere is replaced.
        env[LAUNCH_ENV] = uuid.uuid4().hex
    return env[LAUNCH_ENV]


@contextmanager
def claimed(folder: Path) -> Iterator[None]:
    """This launch as the run's only trainer while the block runs: rank zero locks `folder`,
    other ranks check that the lock is their rank zero's. Raises RunInUseError if another
    launch holds it."""
    if not is_rank_zero():
        _follow(folder)
        yield
        return
    handle = _lock(folder)
    try:
        yield
    finally:
        handle.close()  # releases the lock: in-process sweeps run many jobs, one at a time


def _lock(folder: Path) -> IO[str]:
    """The open, locked `run.lock` of `folder`, naming this process as its holder."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = (folder / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _parse(handle.read())
        handle.close()
        raise RunInUseError(_in_use(folder, holder)) from None
    handle.seek(0)
    handle.truncate()
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "launch": launch_id(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    handle.write(json.dumps(holder))
    handle.flush()
    return handle


def _follow(folder: Path) -> None:
    ours = launch_id()
    deadline = time.monotonic() + FOLLOW_TIMEOUT_S
    while True:
        holder = _read(folder)
        if not holder or holder.get("launch") == ours or not _alive(holder):
            return  # free, ours, or left by a dead launch that our rank zero is taking over
        if time.monotonic() > deadline:
            raise RunInUseError(_in_use(folder, holder))
        time.sleep(0.5)


def _read(folder: Path) -> dict:
    path = folder / LOCK_FILE
    return _parse(path.read_text()) if path.is_file() else {}


def _parse(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {}


def _alive(holder: dict) -> bool:
    """Whether the lock holder still runs; on another host the lock's word is taken."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def _in_use(folder: Path, holder: dict) -> str:
    who = (
        f"process {holder['pid']} on {holder['host']} (since {holder.get('since', '?')})"
        if holder
        else "another process"
    )
    return (
        f"{folder} is being trained by {who}: two commands on one run would train into the "
        "same checkpoints and MLflow run. Wait for it to end, or stop it (kill -TERM "
        f"{holder.get('pid', '<pid>')}) and continue it with resume=auto; for a separate run, "
        "give this command another hydra.run.dir"
    )
