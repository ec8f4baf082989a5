"""Process-wide settings every fer_lab command starts with: glibc's allocator tuned for big
tensors, and a garbage collector that leaves the imported libraries' objects alone.

Both fix measured costs of a 2-epoch tf_emotion_cnn run on a 2-core CPU
(experiments/benchmarks.md, "End to end"): glibc returns every freed block over 32 MB to the
OS, so each training step page-faulted its largest activations in again (a plain script's
epoch spent 45.8 s of 72.2 s in the kernel); and the cyclic collector traversed the ~800k
objects of torch, Lightning and MLflow on each full collection (1.4 s while importing them,
~2 s more at exit).
"""

import atexit
import ctypes
import gc
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# What fer_lab sets, as (mallopt(3) parameter, the environment variable glibc reads at
# start-up for it, value): no mmap for big blocks (they come from the heap and go back to
# it), and a heap trimmed only when over 2 GiB of its top is free (mallopt takes an int).
M_MMAP_MAX, M_TRIM_THRESHOLD = -4, -1
ALLOCATOR_SETTINGS = (
    (M_MMAP_MAX, "MALLOC_MMAP_MAX_", 0),
    (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1),
)
# Variables by which a user has already chosen glibc's allocator settings.
USER_ALLOCATOR_ENV = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "GLIBC_TUNABLES",
)


def user_set_allocator(environ: Mapping[str, str]) -> bool:
    """Whether `environ` chooses glibc's allocator settings itself: they are left alone."""
    return any(name in environ for name in USER_ALLOCATOR_ENV)


def keep_freed_memory() -> bool:
    """Keep big freed blocks in glibc's heap for reuse, unless the user set the allocator. The
    process then keeps its peak memory until it exits, which a training run reaches every
    step anyway. Returns whether the settings were applied (not on other systems or C
    libraries)."""
    if not sys.platform.startswith("linux") or user_set_allocator(os.environ):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(parameter, value) for parameter, _, value in ALLOCATOR_SETTINGS])


def same_allocator_env(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` plus what gives another program (started with it) the allocator settings a
    fer_lab command sets for itself. The benchmark runs its plain script so
    (fer_lab/bench/end_to_end.py)."""
    if user_set_allocator(environ):
        return dict(environ)  # fer_lab leaves the user's settings as they are, and so does this
    return {**environ, **{name: str(value) for _, name, value in ALLOCATOR_SETTINGS}}


def skip_final_collections() -> None:
    """At exit, freeze the heap: the interpreter's final collections would traverse all of it
    once more, just before the process frees it."""
    atexit.register(gc.freeze)


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Import torch, Lightning and MLflow with the cyclic collector paused, then freeze what
    they built: modules live until exit, so collecting them is only cost. Later collections,
    during training too, then traverse only the objects made since."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count():
            # A later job of a multirun in this process: the modules are frozen already, and
            # what the last job left must be collected now, or frozen with them for good.
            gc.collect()
        gc.freeze()
        if was_enabled:
            gc.enable()
