"""User-facing error types: a bad config field or input, reported in one line that names it and the fix."""


class ConfigError(ValueError):
    """A config field holds a value we cannot run with; the message names the field and the fix."""
