"""Errors a user can fix (bad paths, data or config values): reported without a traceback."""


class FERLabError(Exception):
    """Base class for expected, user-fixable failures; the CLI prints them and exits with 2."""


class DataError(FERLabError):
    """A dataset is missing or malformed; the message names the file, row or key and the fix."""


class ConfigError(FERLabError):
    """A config value cannot work (a missing weights file, an impossible combination)."""


class TrackingError(FERLabError):
    """The tracking store cannot be used (server unreachable, store locked)."""
