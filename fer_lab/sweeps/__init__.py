"""Hyper-parameter sweeps: the Optuna sweeper, study storage, trial pruning, parent runs."""
