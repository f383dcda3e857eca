"""Errors the user can act on.

Anything raised as a :class:`StableFaceError` is shown by the command line as one line on stderr
with a non-zero exit code, never as a traceback. Its message must say what is wrong and, where it
can, what to do about it.
"""


class StableFaceError(Exception):
    """Base class of every error meant for the user rather than for a developer."""


class InputError(StableFaceError):
    """The input (a file, an argument, a stream) is not usable."""


class OutputError(StableFaceError):
    """The output cannot be written where the user asked."""


class MissingDependencyError(StableFaceError):
    """An optional dependency is not installed; the message names the extra to install."""
