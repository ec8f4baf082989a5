"""`hydra/sweeper: optuna`: Hydra instantiates only plugin classes defined in the
`hydra_plugins` package, so the class is declared here; its logic is
fer_lab/sweeps/optuna_sweeper.py (imported as a module, so Hydra's plugin scan finds only
this class)."""

from fer_lab.sweeps import optuna_sweeper


class OptunaSweeper(optuna_sweeper.OptunaStudySweeper):
    """fer_lab's Optuna sweeper (see fer_lab/sweeps/optuna_sweeper.py)."""
