"""``OnnxOrganSegmenter``: the data engine's organ segmenter, running a model_repository model in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.data.anatomy import MODALITIES
from training.segmenter.dataset import global_lookup
from training.segmenter.errors import SegmenterError
from training.segmenter.export import ort_session, read_metadata
from training.segmenter.preprocessing import PreprocessSpec, preprocess_image, restore_labels
from training.segmenter.repository import model_name


class OnnxOrganSegmenter:
    """Implements ``training.data.segmentation.OrganSegmenter`` with ONNX Runtime on ``model_repository``.

    Loads ``organ_seg_<modality>[_<variant>]/1/model.onnx`` lazily per modality, preprocesses as the model's
    metadata says, and maps the predicted classes back to the global organ labels at the input's size.
    """

    def __init__(self, model_repository: Path, variant: str = "fp32", threads: int = 2):
        self.model_repository = Path(model_repository)
        self.variant = variant
        self.threads = threads
        self._loaded: dict[str, tuple[object, PreprocessSpec, np.ndarray]] = {}
        model_name("ct", variant)  # validates the variant name early

    def load(self, modality: str):
        """Load (once) and return the session, preprocessing and label map of one modality's model."""
        if modality not in MODALITIES:
            raise SegmenterError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
        if modality not in self._loaded:
            path = self.model_repository / model_name(modality, self.variant) / "1" / "model.onnx"
            metadata = read_metadata(path)
            if metadata.get("medclm.modality") != modality or "medclm.preprocessing" not in metadata:
                raise SegmenterError(f"{path} is not a MedCLM {modality} organ segmenter (metadata missing)")
            spec = PreprocessSpec.from_json(metadata["medclm.preprocessing"])
            # Trust the model's own label list over our vocabulary, so an older model keeps its meaning.
            to_global = np.array(json.loads(metadata["medclm.global_labels"]), dtype=np.uint8)
            if not np.array_equal(to_global, global_lookup(modality)):
                raise SegmenterError(f"{path} was trained with organ labels {to_global.tolist()}, "
                                     f"the current vocabulary has {global_lookup(modality).tolist()}")
            self._loaded[modality] = (ort_session(path, self.threads), spec, to_global)
        return self._loaded[modality]

    def segment(self, image: np.ndarray, modality: str, pixel_spacing_mm: tuple[float, float]) -> np.ndarray:
        """uint8 mask of global organ labels with the same height and width as ``image`` (raw units)."""
        session, spec, to_global = self.load(modality)
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] in (1, 3, 4):  # tolerate RGB(A) radiographs: use luminance
            image = image[..., :3].mean(axis=-1).astype(image.dtype) if image.shape[-1] > 1 else image[..., 0]
        network_input, box = preprocess_image(image, spec)
        probabilities = session.run(["probabilities"], {"image": network_input[None]})[0][0]
        return to_global[restore_labels(probabilities, box)]
