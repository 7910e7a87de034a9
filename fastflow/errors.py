"""The exceptions fastflow raises for bad input, which the command line reports in one line (exit 2).

:class:`UsageError` (a ``ValueError``) is raised where fastflow validates what a user gave it: a
config value, a command-line argument, a data folder, an argument of the Python API. Its message
names what was wrong and what is expected. Any other exception escaping the command line is a bug
in fastflow and keeps its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input from the user; the message says what was wrong and what is expected."""


class ConfigError(UsageError):
    """A configuration file, dict or value that does not match the expected schema."""


class DataError(UsageError):
    """A data folder or file that is there but cannot be used (e.g. no image in it decodes)."""
