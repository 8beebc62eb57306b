"""One root error type with semantic subclasses.

Every error raised on purpose by Cyclonetix code is one of these, with a one-line message that
says what was wrong and where. The CLI maps each class to one exit code and the HTTP API to one
status (each a single table), so callers never match on message text.
"""

from __future__ import annotations


class CyclonetixError(Exception):
    """Base of every error Cyclonetix raises on purpose; the message is one line."""


class Invalid(CyclonetixError):
    """The input was wrong (bad definitions, unknown task, malformed parameter): fix it."""


class NotFound(CyclonetixError):
    """The thing asked for does not exist (a run id, a task of a run)."""


class Conflict(CyclonetixError):
    """The request collides with the current state (run id taken, run already ended, a
    conditional append that lost)."""


class Unavailable(CyclonetixError):
    """A service could not be reached or did not answer in time; trying again may work."""
