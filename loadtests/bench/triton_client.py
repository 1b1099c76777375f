"""A load-harness client for a bare Triton server: the organ segmenter's KServe-v2 ``infer`` over gRPC.

This is what a user would deploy instead of the service: Triton serving the same ``organ_seg_*`` models
from the same repository. The client does the preprocessing itself (decode, window, letterbox, with the
service's own functions), once per image before the load starts, so the timed requests carry only the
network input tensor and return the ``probabilities`` output the service's engine also asks Triton for.
That leaves Triton none of the service's per-request work (decode, mask restoration, RLE): a strict
comparison for the service.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from loadtests.metrics import RequestRecord
from loadtests.scenarios import RequestSpec


def network_input(image_data: bytes, media_type: str, modality: str, repository: Path) -> tuple[str, np.ndarray]:
    """(model name, [1,1,H,W] float32 input) for one image, preprocessed as the service preprocesses it."""
    from service.core.pipeline import segmenter_input
    from service.core.types import ImageInput
    from service.imaging.decode import decode_image
    from training.segmenter.onnx_segmenter import prepare_input, read_contract

    decoded = decode_image(ImageInput(image_data, media_type, 0, modality), 50_000_000)
    name = f"organ_seg_{decoded.modality}"
    contract = read_contract(Path(repository) / name / "1" / "model.onnx", decoded.modality)
    tensor, _ = prepare_input(segmenter_input(decoded), contract)
    return name, tensor[None].astype(np.float32)


class TritonSegmentClient:
    """``segment`` requests straight to Triton (tritonclient's asyncio gRPC client)."""

    def __init__(self, url: str, repository: Path, output: str = "probabilities"):
        self.url = url
        self.client = None  # created on the event loop of the first request (grpc.aio needs a running loop)
        self.repository = Path(repository)
        self.output = output
        self._inputs: dict[tuple[str, bool], tuple[str, np.ndarray]] = {}

    def prepare(self, spec: RequestSpec) -> tuple[str, np.ndarray]:
        """The cached (model, tensor) of the spec's image (precision variants map to their model names)."""
        key = (spec.image.name, spec.precision)
        if key not in self._inputs:
            name, tensor = network_input(spec.image.data, spec.image.media_type, spec.image.modality,
                                         self.repository)
            if spec.precision and spec.precision != "fp32":
                name = f"{name}_{spec.precision}"
            self._inputs[key] = (name, tensor)
        return self._inputs[key]

    async def send(self, spec: RequestSpec, timeout: float) -> RequestRecord:
        """One ``infer`` call; Triton's errors are recorded by their gRPC status name."""
        import tritonclient.grpc as grpcclient
        from tritonclient.grpc.aio import InferenceServerClient
        from tritonclient.utils import InferenceServerException

        if self.client is None:
            self.client = InferenceServerClient(self.url)
        name, tensor = self.prepare(spec)
        record = RequestRecord(spec.kind, time.perf_counter())
        try:
            request = grpcclient.InferInput("image", list(tensor.shape), "FP32")
            request.set_data_from_numpy(tensor)
            await self.client.infer(name, [request], outputs=[grpcclient.InferRequestedOutput(self.output)],
                                    client_timeout=timeout)
            record.ok, record.status = True, "OK"
        except InferenceServerException as exc:
            record.status = str(exc.status() or "UNKNOWN").removeprefix("StatusCode.")
            record.error = exc.message() or ""
        record.end = time.perf_counter()
        return record

    async def close(self) -> None:
        """Close the channel."""
        if self.client is not None:
            await self.client.close()
            self.client = None
