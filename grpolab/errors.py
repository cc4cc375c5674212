"""Errors that are the user's to fix. The command line prints each as one line and exits 2 (`grpolab.cli`)."""

from __future__ import annotations


class RunFolderError(RuntimeError):
    """A run folder cannot be used as asked: not a run, in use by another process, protected, or damaged."""
