"""The one exception type the segmenter raises for expected failures (bad files, bad arguments)."""

from __future__ import annotations


class SegmenterError(ValueError):
    """A user-facing segmenter failure; the message names the offending file or argument.

    It subclasses ``ValueError`` so callers that only know "bad input" can catch it without importing us.
    """
