"""Errors detlab raises on bad input: the CLI prints them as one line, no traceback.

Every message names the file, the field and what to do.
"""


class DetlabError(Exception):
    """Base class: the CLI prints ``detlab: <message>`` and exits with ``exit_code``."""

    exit_code = 2


class DataError(DetlabError):
    """A dataset path, file or field that cannot be used."""

    exit_code = 1


class ConfigError(DetlabError):
    """An unknown or invalid configuration key or value."""


class WeightsError(DetlabError):
    """Pretrained weights that cannot be found or loaded."""
