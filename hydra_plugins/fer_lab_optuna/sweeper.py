"""Hydra finds sweepers by importing the modules of the `hydra_plugins` namespace: importing
fer_lab's registers `hydra/sweeper: optuna`. The sweeper itself is fer_lab/sweeps/."""

from fer_lab.sweeps.optuna_sweeper import OptunaSweeper

__all__ = ["OptunaSweeper"]
