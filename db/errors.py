"""Errors raised by the repository. Each carries one sentence a user or operator can act on."""


class DbError(ValueError):
    """Base class: the request cannot be carried out as asked (a ValueError, so UIs can show it)."""


class InvalidInput(DbError):
    """A value is malformed or out of range, e.g. a rating of 11."""


class NotFound(DbError):
    """A referenced row does not exist, e.g. an unknown image id."""


class Conflict(DbError):
    """The request clashes with the current state, e.g. rating an image of a closed round."""


class LeaseLost(Conflict):
    """A worker tried to finish a job it no longer owns (its lease expired and the job was reclaimed, or an admin
    stopped or cancelled it, or it was finished or handed back meanwhile); the sentence says which."""


class SchemaOutOfDate(RuntimeError):
    """The database schema is not at the revision this code needs."""
