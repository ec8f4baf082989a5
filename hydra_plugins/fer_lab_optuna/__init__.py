"""fer_lab's Optuna sweeper for Hydra (`hydra/sweeper: optuna`).

Hydra only discovers plugins in the `hydra_plugins` namespace package, so this is where it
finds the sweeper; the code lives in fer_lab/sweeps/ and ships in the same wheel.
"""
