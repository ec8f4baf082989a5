"""Checkpoint files: written atomically, read as data only (never as code)."""

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins import TorchCheckpointIO

from fer_lab.core.errors import ConfigError

log = logging.getLogger(__name__)

# Files whose whole pickle the user vouches for, separated by os.pathsep (see load_checkpoint).
TRUST_ENV = "FER_LAB_TRUSTED_CHECKPOINTS"


class UntrustedCheckpointError(ConfigError):
    """A checkpoint holds objects that unpickling would have to run code for."""


def _trusted(path: Path) -> bool:
    listed = os.environ.get(TRUST_ENV, "").split(os.pathsep)
    return path.resolve() in {Path(entry).expanduser().resolve() for entry in listed if entry}


def load_checkpoint(
    path: str | Path, map_location: Any = "cpu", mmap: bool = False
) -> dict[str, Any]:
    """A checkpoint as data: `torch.load(weights_only=True)`, which builds only tensors,
    containers and primitives and runs no code from the file.

    fer_lab's own checkpoints (weights, optimiser and scheduler state, the resolved config as
    plain containers, class names, callback state) need nothing more, so no other type is
    allowed. A shared `.ckpt` with anything else (a pickled callable, a custom class) is
    refused; a user who trusts its source names it in FER_LAB_TRUSTED_CHECKPOINTS.
    """
    path = Path(path).expanduser()
    if _trusted(path):
        log.warning("%s: fully unpickled, trusted through %s", path, TRUST_ENV)
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=False)
    try:
        return torch.load(path, map_location=map_location, mmap=mmap, weights_only=True)
    except pickle.UnpicklingError:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a torch.save file at all: the caller's error says so
            unsafe = []
        if not unsafe:
            raise
    raise UntrustedCheckpointError(
        f"{path}: refused to load: it holds {', '.join(unsafe)}, which unpickling would have to "
        "run code for (a fer_lab checkpoint holds only tensors, containers and numbers). If you "
        f"trust where it came from, run again with {TRUST_ENV}={path.resolve()}"
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it.

    A process killed mid-write leaves the previous checkpoint intact. (Lightning's own writer
    stages in the system temp dir, which is a copy, not a rename, across filesystems.)
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with partial.open("wb") as file:
            torch.save(checkpoint, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """What `resume` continues from, read as data whatever Lightning asks for."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        return load_checkpoint(path, map_location or "cpu")
