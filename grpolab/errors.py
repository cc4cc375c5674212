"""Errors that are the user's to fix, all in one place. The command line prints each as one line and exits 2
(`grpolab.cli`); the modules that raise them import them from here."""

from __future__ import annotations


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked: not a run, in use by another process, protected, or damaged."""


class UserError(Exception):
    """Raised for problems the user can fix; printed as one line."""


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the key."""


class TaskError(ValueError):
    """An unknown task name or unusable task data; one line naming the problem."""


class ModelError(ValueError):
    """A model name or path that cannot be loaded; the message names the problem in one line."""


class RewardError(ValueError):
    """A reward function failed on a row; one line naming both."""


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many non-finite updates); printed as one line."""
