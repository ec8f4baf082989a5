"""Errors a user can fix (bad paths, data or config values): reported without a traceback;
and the exit a stop signal asks for."""

import signal


class FERLabError(Exception):
    """Base class for expected, user-fixable failures; the CLI prints them and exits with 2."""


class DataError(FERLabError):
    """A dataset is missing or malformed; the message names the file, row or key and the fix."""


class ConfigError(FERLabError):
    """A config value cannot work (a missing weights file, an impossible combination)."""


class TrackingError(FERLabError):
    """The tracking store cannot be used (server unreachable, store locked)."""


class StopRequested(SystemExit):
    """Raised after Ctrl-C or SIGTERM, where it is safe to stop; the exit code is 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name
