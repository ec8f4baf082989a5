"""Names of a grid's or sweep's child runs: what differs between them, not what they share.

A grid `-m model=nouri,cntk_simple dataset=synthetic trainer.max_epochs=1` names its children
`nouri` and `cntk_simple`; an Optuna trial is named by its sampled values,
`lr=0.003 batch_size=64`. The overrides every child shares are tagged on the parent run
(SHARED_TAG), so the runs table and the leaderboard read at a glance.

Light to import (no torch): Hydra's multirun callback and every job's start use it.
"""

import os
import re
from collections.abc import Iterable, Sequence

# The keys a multirun sweeps, from its command line, for the jobs (and launcher workers).
SWEPT_KEYS_ENV = "FER_LAB_SWEPT_KEYS"
# On a parent run: the overrides all its children share.
SHARED_TAG = "fer_lab.shared_overrides"
_SWEEP_SYNTAX = re.compile(r"^(range|choice|glob|interval|tag)\(")


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _sweeps(value: str) -> bool:
    """Whether an override's value is a sweep: `a,b` (outside brackets and quotes) or one of
    Hydra's sweep functions."""
    depth, quote = 0, ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[({":
            depth += 1
        elif char in "])}":
            depth -= 1
        elif char == "," and depth == 0:
            return True
    return bool(_SWEEP_SYNTAX.match(value))


def swept_keys(command_line: Iterable[str], search_space: Iterable[str] = ()) -> list[str]:
    """The keys a multirun varies: its command line's sweeps, then a sweeper's search space."""
    keys = [_key(o) for o in command_line if "=" in o and _sweeps(o.split("=", 1)[1])]
    return list(dict.fromkeys([*keys, *search_space]))


def shared_overrides(command_line: Iterable[str], swept: Sequence[str]) -> list[str]:
    """The command line's overrides that every child runs with."""
    return [o for o in command_line if "=" in o and _key(o) not in swept]


def publish_swept_keys(keys: Sequence[str]) -> None:
    """For this process's jobs and the launcher processes it starts."""
    os.environ[SWEPT_KEYS_ENV] = ",".join(keys)


def child_name(overrides: Iterable[str], search_space: Iterable[str] = ()) -> str | None:
    """`nouri`, `lr=0.003 batch_size=64`: a job's values of the swept keys (the model alone,
    other keys by their last part), or None outside a multirun that sweeps."""
    published = os.environ.get(SWEPT_KEYS_ENV, "")
    swept = {*filter(None, published.split(",")), *search_space}
    words = []
    for override in overrides:
        if "=" not in override or _key(override) not in swept:
            continue
        key, value = _key(override), override.split("=", 1)[1]
        words.append(value if key == "model" else f"{_short(key)}={value}")
    return " ".join(words) or None


def _short(key: str) -> str:
    return re.split(r"[./]", key)[-1]
