"""The two engine protocols the core depends on; every engine module implements one of them.

Engines raise :class:`service.errors.ServiceError` (UNAVAILABLE when they are down, DEADLINE_EXCEEDED,
OVERLOADED) for expected failures; anything else is a bug and becomes INTERNAL in the transports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator, Protocol

import numpy as np
from PIL import Image


@dataclass
class GenerationParams:
    """Sampling parameters of one VQA generation."""

    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None


@dataclass
class GenerationChunk:
    """Cumulative state of a generation after a step: the new text, counts, and whether it finished."""

    delta: str  # text added since the previous chunk
    prompt_tokens: int
    completion_tokens: int
    finished: bool
    finish_reason: str = ""  # stop | length | abort, when finished


class VqaEngine(Protocol):
    """A vision-language engine serving one model (one precision variant)."""

    name: str  # repository model name, e.g. "medclm" or "medclm_int8"

    async def start(self) -> None:
        """Load the model; returns when it can serve."""

    def ready(self) -> bool:
        """True while requests can be served."""

    def generate(self, messages: list[dict], image: Image.Image, params: GenerationParams,
                 request_id: str) -> AsyncIterator[GenerationChunk]:
        """Stream a generation for chat ``messages`` (built by ``training.medclm.prompts.build_messages``)
        and the RGB model-view ``image``. Closing the iterator early aborts the request in the engine."""

    async def abort(self, request_id: str) -> None:
        """Stop a running generation (client gone, deadline passed)."""

    async def close(self) -> None:
        """Release the engine."""


class SegmentationEngine(Protocol):
    """An organ segmenter serving the models of one precision variant for every modality it has."""

    engine: str  # onnxruntime | triton

    async def start(self) -> None:
        """Load (or connect to) the models."""

    def ready(self) -> bool:
        """True while requests can be served."""

    async def segment(self, model: str, pixels: np.ndarray, modality: str,
                      deadline: float | None = None) -> np.ndarray:
        """(H, W) uint8 global organ labels for ``pixels`` (physical units, see DecodedImage) using the
        repository model ``model`` (e.g. organ_seg_ct_int8). Batched with concurrent calls when enabled;
        a request whose deadline passed while queued is dropped before inference (DEADLINE_EXCEEDED)."""

    async def close(self) -> None:
        """Release sessions / connections."""
