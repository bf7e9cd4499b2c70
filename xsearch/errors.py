"""Exceptions raised by xsearch. Library code raises these; only the CLI turns them into exit codes."""
from __future__ import annotations


class XSearchError(Exception):
    """Base class of every error xsearch raises on purpose; its message is one line for the user."""

    exit_code: int = 1


class UnknownEncoder(XSearchError):
    """An encoder name that no registered backend understands."""


class EncoderMismatch(XSearchError):
    """A collection built with one encoder was used with another."""


class DimensionMismatch(XSearchError):
    """Vectors of the wrong dimension were given to an index or a collection."""


class BadInput(XSearchError):
    """A file or value that cannot be used: unreadable, unsupported, empty."""


class MissingCollection(XSearchError):
    """The collection (or its home folder) does not exist."""


class MissingItem(XSearchError):
    """No item with this id in the collection, or its file is gone."""


class SchemaTooNew(XSearchError):
    """The collection was written by a newer xsearch than this one."""


class MissingDependency(XSearchError):
    """An optional package needed for this feature is not installed."""


class ModelLoadError(XSearchError):
    """Model weights could not be found or loaded (no network here: give a local path)."""


class CollectionBusy(XSearchError):
    """Another process is writing the collection (its writer lock is held); retry, or wait with ``--wait``."""


class DamagedCollection(BadInput):
    """A collection file is damaged (corrupt SQLite pages, missing meta.sqlite): ``xsearch verify --repair``."""


class XSearchWarning(UserWarning):
    """Something the user should know that did not stop the command (the CLI prints it as one line)."""
