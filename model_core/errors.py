"""Exceptions model_core raises for problems a user, a checkpoint or a robot can cause.

Every message names the field, the expected value and the actual value; `assert` is kept for internal invariants.
"""


class ModelCoreError(Exception):
    """Base class for model_core errors."""


class ConfigError(ModelCoreError, ValueError):
    """An invalid model / sampler configuration value."""


class CheckpointError(ModelCoreError):
    """A checkpoint that does not fit the model: missing, unexpected or mismatched tensors, bad metadata."""


class InputError(ModelCoreError, ValueError):
    """A tensor given to the model has the wrong shape, dtype or non-finite values."""
