"""OmegaConf resolvers the configs under conf/ rely on, and the config location."""

import os

from omegaconf import OmegaConf

# Hydra finds the configs as package data, so they work from a wheel in any directory.
CONFIG_PATH = "pkg://fer_lab.conf"


def register_resolvers() -> None:
    """`${len:...}` lets model configs derive num_classes from `dataset.classes`; `${cwd:}` is
    the launch directory, usable (unlike `${hydra:runtime.cwd}`) in `hydra.sweep.dir`."""
    OmegaConf.register_new_resolver("len", len, replace=True)
    OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
