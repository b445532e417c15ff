"""Errors: the typed failures of rentbox, each with a message ready for a user to read.

The CLI prints them as `Error: <message>` and exits 1; the web layer maps each class to
an HTTP status in one place. Messages never contain secrets.
"""


class RentboxError(Exception):
    """Base class: something the user can act on, explained in one sentence."""


class InvalidInput(RentboxError):
    """A request, file or argument is malformed. Nothing was changed."""


class NotFound(RentboxError):
    """The thing asked for does not exist."""


class Conflict(RentboxError):
    """The request is well-formed but the current state does not allow it."""


class DatabaseError(RentboxError):
    """The database file cannot be opened or migrated."""


class Unavailable(RentboxError):
    """The database cannot be written right now (disk full, an I/O error, or another
    process holding the write lock too long). Nothing was changed; try again later."""


class TooLate(Unavailable):
    """The caller's deadline passed before the change could be committed: it has given
    up on the answer, so nothing was changed (a rental nobody receives would count a
    failure toward a ban)."""
