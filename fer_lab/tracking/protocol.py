"""The evaluation protocol of a run, stated in its tags: which split trains, which selects the
checkpoint (and drives early stopping, schedulers and sweeps), which is reported.

By default the validation split selects and the test split is scored once, after training.
A config that selects on the test split (its val split is the test split, or a monitor reads
`test/` metrics) still runs, since some published numbers were made that way, but says so.
"""

import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _split_names(dataset: DictConfig) -> tuple[str, str, str]:
    if "splits" in dataset:
        return dataset.splits.train, dataset.splits.val, dataset.splits.test
    if "val_fraction" in dataset:
        return "train", f"{dataset.val_fraction:.0%} of train, seeded", "test"
    return "train", "val", "test"


def _monitors(cfg: DictConfig) -> list[str]:
    found = [cfg.optimized_metric]
    for callback in cfg.callbacks.values():
        if callback and callback.get("monitor"):
            found.append(callback.monitor)
    if cfg.scheduler and cfg.scheduler.get("monitor"):
        found.append(cfg.scheduler.monitor)
    return found


def protocol_tags(cfg: DictConfig) -> dict[str, str]:
    """`protocol.train/select/report` and `protocol.selects_on_test` ("true"/"false")."""
    train, val, test = _split_names(cfg.dataset)
    test_monitors = [m for m in _monitors(cfg) if m.startswith("test/")]
    selects_on_test = val == test or bool(test_monitors)
    if selects_on_test:
        log.warning(
            "This run selects on the test split (val=%s, test=%s, test monitors %s): its test "
            "numbers are optimistic; the run is tagged protocol.selects_on_test=true",
            val,
            test,
            test_monitors,
        )
    return {
        "protocol.train": str(train),
        "protocol.select": str(val),
        "protocol.report": str(test),
        "protocol.selects_on_test": str(selects_on_test).lower(),
    }
