"""The trainer's one error type: every refused input says what is wrong and where, before any training step."""

from __future__ import annotations


class MedCLMError(ValueError):
    """A configuration, dataset or checkpoint the MedCLM trainer refuses."""
