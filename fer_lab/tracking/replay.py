"""`python -m fer_lab.tracking.replay <run dir>`: deliver what a run's processes could not send
to MLflow (its `mlflow_undelivered.jsonl`), once the tracking store answers again.

A resumed run does this by itself; this command is for runs that are over. The store is
`--tracking-uri`, else MLFLOW_TRACKING_URI, else the run's resolved config
(`artifacts/config.yaml`, `logger.tracking_uri`) unless its password was masked. Exit code
0 when everything went, 1 when items remain in the file (rejected, or the store is down).
"""

import argparse
import logging
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from fer_lab.core.errors import FERLabError, TrackingError
from fer_lab.core.secrets import MASK, install_log_masking, mask_secrets

log = logging.getLogger("fer_lab.tracking.replay")
UNDELIVERED_FILE = "mlflow_undelivered.jsonl"


def tracking_uri_of(run_dir: Path, given: str | None) -> str:
    """The store to deliver to (see the module docstring for the order)."""
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    config = run_dir / ".hydra" / "config.yaml"
    saved = (
        OmegaConf.load(config).get("logger", {}).get("tracking_uri") if config.is_file() else None
    )
    if not saved:
        raise TrackingError(
            f"{run_dir}: no saved config names its tracking store; pass --tracking-uri URI"
        )
    if MASK in str(saved):
        raise TrackingError(
            f"{config}: logger.tracking_uri has its password masked ({saved}); pass the full "
            "URL with --tracking-uri or MLFLOW_TRACKING_URI"
        )
    return str(saved)


def replay(run_dir: Path, tracking_uri: str | None = None) -> int:
    """Send the run's undelivered items in order; returns how many remain undelivered."""
    from fer_lab.tracking.mlflow_logger import FERMLflowLogger  # MLflow loads after the checks

    path = run_dir / UNDELIVERED_FILE
    if not path.is_file():
        log.info("%s: nothing undelivered (no %s)", run_dir, UNDELIVERED_FILE)
        return 0
    uri = tracking_uri_of(run_dir, tracking_uri)
    # Each item names its run; the logger only carries them to the store, in order.
    logger = FERMLflowLogger(tracking_uri=uri, undelivered_path=path)
    remaining = logger.replay()
    if remaining:
        log.warning("%d items remain in %s", remaining, path)
    else:
        log.info("Every undelivered item of %s reached %s", run_dir, mask_secrets(uri))
    return remaining


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fer_lab.tracking.replay", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a training run's output folder")
    parser.add_argument("--tracking-uri", help="the MLflow store (default: see above)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    install_log_masking()
    if not args.run_dir.is_dir():
        parser.error(f"{args.run_dir}: not a folder")
    try:
        sys.exit(1 if replay(args.run_dir, args.tracking_uri) else 0)
    except FERLabError as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
