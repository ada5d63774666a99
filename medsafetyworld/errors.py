"""Errors a user can cause. The CLI prints their message alone, never a traceback."""


class MSWError(Exception):
    """A problem with the user's input (config, preset, path, file), stated with the fix."""


class ConfigError(MSWError):
    """A bad preset, strategy name, or config value."""


class DataError(MSWError):
    """A missing, corrupt or mismatched file on disk."""
