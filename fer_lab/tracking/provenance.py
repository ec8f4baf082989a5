"""Where a run comes from: the code's commit and the hardware, for tags and results tables."""

import os
import platform
import subprocess
from pathlib import Path

import fer_lab


def git_commit() -> str:
    """The commit of the fer_lab checkout that runs, or 'unknown' outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(fer_lab.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def describe_hardware() -> str:
    """The device a run trains on, for results tables: GPU name, or CPU cores and machine."""
    import torch  # here: run names are made before the training code imports it

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU {os.cpu_count()} cores {platform.machine()}"
