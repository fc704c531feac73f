"""The errors clipjax raises for what a user gave it, so entry points can print them as one
line (no traceback) and exit non-zero, while a genuine bug keeps its traceback."""


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model or layout it was read as, or cannot be read."""


class ConfigError(ValueError):
    """A setting (config key, mesh, batch size, data source) that cannot run as given."""
