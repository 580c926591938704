"""Errors a user can act on. The CLI prints these as one line and exits non-zero."""

from __future__ import annotations


class S2IError(Exception):
    """Base class: anything the user can fix (bad file, missing weights, bad option)."""


class InputError(S2IError):
    """An input file or folder is missing, unreadable or unusable."""


class WeightsError(S2IError):
    """A pretrained weight file is missing or does not match its checksum."""


class CheckpointError(S2IError):
    """A run folder or checkpoint is incomplete, corrupt or from another version."""
