"""Errors a user can act on.

Every error says what is wrong and what to do about it, so the CLI can print it
without a traceback. Catch `SoftPromptError` to handle all of them.
"""

from __future__ import annotations


class SoftPromptError(Exception):
    """Base class: a problem with the user's input, files or environment."""


class ConfigError(SoftPromptError):
    """A config key or flag has a bad value; the message names the key."""


class DataError(SoftPromptError):
    """A dataset file is missing, empty, malformed, or has unknown labels."""


class BackboneError(SoftPromptError):
    """A backbone cannot be found or loaded (missing package, bad path)."""


class PromptFileError(SoftPromptError):
    """A prompt file is corrupt, truncated, or made for another backbone."""


class TrainingError(SoftPromptError):
    """Training cannot go on (e.g. the loss diverged to NaN/inf)."""


class TrainingDiverged(TrainingError):
    """The loss or the trainable tensors blew up: a result of this run's settings (a
    `compare` grid records it as that unit's outcome and goes on), not a broken setup."""
