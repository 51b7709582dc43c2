"""The one error type of the storage layer, so callers can catch storage problems apart from bugs."""

from __future__ import annotations


class StorageError(Exception):
    """A dataset, version, manifest or array that cannot be read or written as asked.

    The message names the problem and the path involved, and where it helps, what exists instead.
    """
