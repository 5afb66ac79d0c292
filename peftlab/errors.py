"""Errors peftlab raises for input a user can fix."""


class AdapterError(ValueError):
    """A method config, adapter file or adapter state that cannot be used with this model."""
