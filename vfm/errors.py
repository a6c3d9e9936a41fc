"""Errors that the CLIs report as one line on stderr with exit status 2."""


class VfmError(Exception):
    """Base class for user-facing errors: bad configs, data, checkpoints."""


class ConfigError(VfmError):
    """A config file, override or config node is invalid."""


class RegistryError(ConfigError):
    """An unknown registry name or a node that does not fit its builder."""


class DataError(VfmError):
    """A dataset path or sample is missing or malformed."""


class CheckpointError(VfmError):
    """A checkpoint is missing, corrupt or does not fit the model."""


class NonFiniteLossError(VfmError):
    """The loss became NaN or inf and the config says to stop."""
