"""What the transports call: the :class:`ServiceCore` protocol, implemented by ``service.core.pipeline``.

The gRPC servicer and the HTTP routes only decode their wire format into the dataclasses of
``service.core.types``, call one of these methods, and encode the result (KServe's one-core shape).
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol

from service.core.types import AskEvent, AskRequest, AskResult, ModelInfo, SegmentRequest, SegmentResult


class ServiceCore(Protocol):
    """The transport-agnostic service."""

    async def ask(self, request: AskRequest) -> AskResult:
        """Answer one question with reasoning, findings in original pixels and the grounding check."""

    def ask_stream(self, request: AskRequest) -> AsyncIterator[AskEvent]:
        """Text deltas as they are generated, then one event carrying the final :class:`AskResult`.
        Closing the iterator early (client gone) aborts the generation in the engine."""

    async def segment(self, request: SegmentRequest) -> SegmentResult:
        """Organ masks, areas and boxes in original pixels."""

    def list_models(self) -> list[ModelInfo]:
        """Every served model with its readiness."""

    def live(self) -> bool:
        """The process is up (liveness)."""

    def ready(self) -> bool:
        """Every configured engine can serve and the service is not draining (readiness)."""
