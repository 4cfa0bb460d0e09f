"""Expected errors, each with the exit code the command line returns for it.

A user's mistake (a data folder laid out wrongly, a file that is not a checkpoint, a setting
that does not exist) is one of these: the CLI prints it as one `error: ...` line. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class BrainlibError(RuntimeError):
    exit_code = 1


class SettingsError(BrainlibError, ValueError):
    """A setting, recipe or argument that cannot be used."""

    exit_code = 2


class DataError(BrainlibError):
    """The data folder is missing or not laid out as expected, a run lacks its manifest, or a folder to
    write into cannot be made (the code the command line also gives an OSError naming a path)."""

    exit_code = 3


class CheckpointError(BrainlibError, ValueError):
    """A checkpoint file that cannot be read, is not brainlib's, or does not fit this code."""

    exit_code = 4
