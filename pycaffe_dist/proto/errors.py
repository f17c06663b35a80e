"""The error every reader raises for a user's bad file."""


class ProtoError(ValueError):
    """A file that does not parse or does not make sense; str() starts with file:line:col."""
