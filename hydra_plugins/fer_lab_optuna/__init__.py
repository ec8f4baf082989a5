"""fer_lab's Optuna sweeper for Hydra (`hydra/sweeper: optuna`).

Hydra only loads plugins from the `hydra_plugins` namespace package, so the sweeper lives
here rather than inside `fer_lab/`; it ships in the same wheel and is found automatically.
"""
