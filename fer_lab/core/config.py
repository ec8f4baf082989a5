"""OmegaConf resolvers the configs under conf/ rely on, and the config location."""

import os

from omegaconf import OmegaConf

# Hydra finds the configs as package data, so they work from a wheel in any directory.
CONFIG_PATH = "pkg://fer_lab.conf"
GPU_ACCELERATORS = ("gpu", "cuda")


def on_gpu(accelerator: str) -> bool:
    """Whether `trainer.accelerator` trains on a CUDA GPU ("auto" counts when one is visible)."""
    if accelerator == "auto":
        import torch  # only here: the light CLI start must not pay for torch

        return torch.cuda.is_available()
    return accelerator in GPU_ACCELERATORS


def if_gpu(accelerator: str, on_gpu_value: str, otherwise: str) -> str:
    """`on_gpu_value` for a GPU trainer, else `otherwise`: `trainer=gpu` or `trainer=ddp`
    with `trainer.accelerator=cpu` must not keep the GPU's bf16 (5-7x slower on CPUs)."""
    return on_gpu_value if on_gpu(accelerator) else otherwise


def loader_workers(accelerator: str) -> int:
    """Loader processes for the per-sample path: on a GPU, every core but the one driving it
    (at most 8); on a CPU, at most 2, because workers take cores from the model itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if on_gpu(accelerator):
        return max(1, min(8, (cores or 1) - 1))
    return min(2, cores or 1)


def register_resolvers() -> None:
    """`${len:...}` lets model configs derive num_classes from `dataset.classes`; `${cwd:}` is
    the launch directory, usable (unlike `${hydra:runtime.cwd}`) in `hydra.sweep.dir`;
    `${on_gpu:...}`, `${if_gpu:...}` and `${loader_workers:...}` switch the speed settings on
    for GPU trainers."""
    OmegaConf.register_new_resolver("len", len, replace=True)
    OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
    OmegaConf.register_new_resolver("on_gpu", on_gpu, replace=True)
    OmegaConf.register_new_resolver("if_gpu", if_gpu, replace=True)
    OmegaConf.register_new_resolver("loader_workers", loader_workers, replace=True)
