"""The exception a user's mistake raises (re-exported as ``chatcore.UsageError``)."""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in how chatcore was invoked or configured.

    Raise it from ``chatcore_configure`` to make ``chatcore serve`` print the
    message as one line and exit with status 2, without a traceback.
    """
