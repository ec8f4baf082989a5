"""What every `python -m fer_lab.<command>` shares: a user's mistake ends in one line and exit
code 2; tracebacks are kept for real bugs."""

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode

from fer_lab.core.config_checks import check_choices
from fer_lab.core.errors import FERLabError
from fer_lab.core.process import keep_freed_memory, skip_final_collections

log = logging.getLogger("fer_lab")


@contextmanager
def user_errors_exit_2() -> Iterator[None]:
    """Turn a FERLabError (also when Hydra's instantiate wraps it) into a logged line and exit
    code 2. In a multirun it propagates, so the sweeper records the failed job and goes on."""
    try:
        yield
    except (FERLabError, InstantiationException) as error:
        cause = error if isinstance(error, FERLabError) else error.__cause__
        if not isinstance(cause, FERLabError) or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        log.error("%s", cause)
        sys.exit(2)


def run(main: Callable[[], object]) -> None:
    """Check the command line's config names, set up the process (fer_lab/core/process.py), then
    run the Hydra `main`."""
    check_choices(sys.argv[1:])
    keep_freed_memory()
    skip_final_collections()
    main()
