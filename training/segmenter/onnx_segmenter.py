"""``OnnxOrganSegmenter``: the data engine's organ segmenter, running a model_repository model in-process.

The pieces around the network are shared functions, so every consumer of a repository segmenter (this class,
the service's ONNX Runtime and Triton engines) prepares inputs and reads outputs the same way:

- :class:`SegmenterContract` (:func:`read_contract` from the ONNX metadata, :func:`read_folder_contract` from
  ``preprocessing.json`` + ``labels.txt``): the preprocessing and the class → global label map;
- :func:`check_io_contract`: the served graph takes ``image`` [B,1,H,W] float32 and yields ``probabilities``
  [B,K,h,w] with K = the model's classes;
- :func:`prepare_input` (per image, before batching) and :func:`global_labels` (per image, after).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.anatomy import MODALITIES, ORGAN_BY_NAME
from training.segmenter.dataset import global_lookup
from training.segmenter.errors import SegmenterError
from training.segmenter.export import INPUT_NAME, ort_session, read_metadata
from training.segmenter.preprocessing import Letterbox, PreprocessSpec, preprocess_image, restore_labels
from training.segmenter.repository import model_name

PROBABILITIES = "probabilities"  # the output every consumer reads; "labels" is a convenience for Triton users


@dataclass(frozen=True)
class SegmenterContract:
    """What surrounds one repository segmenter's network: its preprocessing and its label map."""

    modality: str
    spec: PreprocessSpec
    to_global: np.ndarray  # uint8 lookup: class index → global organ label (anatomy.py)

    @property
    def classes(self) -> int:
        """Number of output classes, background included."""
        return len(self.to_global)


def _checked_label_map(to_global: np.ndarray, modality: str, source: Path) -> np.ndarray:
    # Trust the model's own label list over our vocabulary only when both agree, so a model trained with an
    # older vocabulary fails loudly instead of naming organs wrongly.
    if not np.array_equal(to_global, global_lookup(modality)):
        raise SegmenterError(f"{source} was trained with organ labels {to_global.tolist()}, "
                             f"the current vocabulary has {global_lookup(modality).tolist()}")
    return to_global


def read_contract(onnx_path: Path, modality: str) -> SegmenterContract:
    """The contract recorded in an ONNX file's ``medclm.*`` metadata; SegmenterError naming the file if the
    file is missing, corrupt, for another modality, or trained with another label vocabulary."""
    if modality not in MODALITIES:
        raise SegmenterError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    metadata = read_metadata(onnx_path)
    if metadata.get("medclm.modality") != modality or "medclm.preprocessing" not in metadata:
        raise SegmenterError(f"{onnx_path} is not a MedCLM {modality} organ segmenter (metadata missing)")
    spec = PreprocessSpec.from_json(metadata["medclm.preprocessing"])
    to_global = np.array(json.loads(metadata["medclm.global_labels"]), dtype=np.uint8)
    return SegmenterContract(modality, spec, _checked_label_map(to_global, modality, onnx_path))


def read_folder_contract(folder: Path, modality: str) -> SegmenterContract:
    """The same contract from the files beside the model (``preprocessing.json``, ``labels.txt``), for
    clients of a server (Triton) that serves the folder: they need not open the ONNX graph."""
    if modality not in MODALITIES:
        raise SegmenterError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    folder = Path(folder)
    spec_path, labels_path = folder / "preprocessing.json", folder / "labels.txt"
    for path in (spec_path, labels_path):
        if not path.is_file():
            raise SegmenterError(f"{path} does not exist")
    spec = PreprocessSpec.from_json(spec_path.read_text())
    if spec.modality != modality:
        raise SegmenterError(f"{spec_path} is for modality {spec.modality!r}, not {modality!r}")
    names = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
    unknown = [n for n in names[1:] if n not in ORGAN_BY_NAME]
    if not names or names[0] != "background" or unknown:
        raise SegmenterError(f"{labels_path} must list 'background' then known organs; unknown: {unknown}")
    to_global = np.array([0] + [ORGAN_BY_NAME[n].label for n in names[1:]], dtype=np.uint8)
    return SegmenterContract(modality, spec, _checked_label_map(to_global, modality, labels_path))


def check_io_contract(inputs: dict[str, tuple[str, list]], outputs: dict[str, tuple[str, list]],
                      contract: SegmenterContract, source: str) -> None:
    """Check a served graph's signature, given as ``{name: (dtype, shape)}`` with numpy dtype names
    ("float32") and -1 or None for dynamic dimensions: input ``image`` [B,1,H,W] float32 with the spec's
    H and W, output ``probabilities`` [B,K,h,w] float32 with K the contract's classes."""
    def fixed(shape) -> list:
        return [d if isinstance(d, int) and d >= 0 else None for d in shape]

    spec = contract.spec
    want_input = [None, 1, spec.input_height, spec.input_width]
    if INPUT_NAME not in inputs or inputs[INPUT_NAME][0] != "float32" \
            or fixed(inputs[INPUT_NAME][1])[1:] != want_input[1:] or len(inputs[INPUT_NAME][1]) != 4:
        raise SegmenterError(f"{source}: expected input {INPUT_NAME!r} float32 [B, 1, {spec.input_height}, "
                             f"{spec.input_width}], the model has {inputs}")
    output = outputs.get(PROBABILITIES)
    if output is None or output[0] != "float32" or len(output[1]) != 4 or fixed(output[1])[1] != contract.classes:
        raise SegmenterError(f"{source}: expected output {PROBABILITIES!r} float32 [B, {contract.classes}, h, w], "
                             f"the model has {outputs}")


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
              "tensor(int64)": "int64", "tensor(int32)": "int32"}


def session_signature(session) -> tuple[dict[str, tuple[str, list]], dict[str, tuple[str, list]]]:
    """(inputs, outputs) of an ONNX Runtime session in :func:`check_io_contract`'s form."""
    def describe(args) -> dict[str, tuple[str, list]]:
        return {a.name: (_ORT_TYPES.get(a.type, a.type), [d if isinstance(d, int) else None for d in a.shape])
                for a in args}

    return describe(session.get_inputs()), describe(session.get_outputs())


def to_greyscale(image: np.ndarray) -> np.ndarray:
    """The image as a 2-D array; RGB(A) radiographs are tolerated and reduced to their luminance."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
        return image[..., :3].mean(axis=-1).astype(image.dtype) if image.shape[-1] > 1 else image[..., 0]
    return image


def prepare_input(image: np.ndarray, contract: SegmenterContract) -> tuple[np.ndarray, Letterbox]:
    """One raw image (physical units) → ([1,H,W] float32 network input, letterbox geometry); stack the
    inputs of several images for one batched run."""
    return preprocess_image(to_greyscale(image), contract.spec)


def global_labels(probabilities: np.ndarray, box: Letterbox, contract: SegmenterContract) -> np.ndarray:
    """One image's ``probabilities`` [K,h,w] → (H, W) uint8 global organ labels at its original size."""
    return contract.to_global[restore_labels(probabilities, box)]


class OnnxOrganSegmenter:
    """Implements ``training.data.segmentation.OrganSegmenter`` with ONNX Runtime on ``model_repository``.

    Loads ``organ_seg_<modality>[_<variant>]/1/model.onnx`` lazily per modality, preprocesses as the model's
    metadata says, and maps the predicted classes back to the global organ labels at the input's size.
    """

    def __init__(self, model_repository: Path, variant: str = "fp32", threads: int = 2):
        self.model_repository = Path(model_repository)
        self.variant = variant
        self.threads = threads
        self._loaded: dict[str, tuple[object, SegmenterContract]] = {}
        model_name("ct", variant)  # validates the variant name early

    def load(self, modality: str) -> tuple[object, SegmenterContract]:
        """Load (once) and return the session and contract of one modality's model."""
        if modality not in MODALITIES:
            raise SegmenterError(f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
        if modality not in self._loaded:
            path = self.model_repository / model_name(modality, self.variant) / "1" / "model.onnx"
            contract = read_contract(path, modality)
            session = ort_session(path, self.threads)
            check_io_contract(*session_signature(session), contract, str(path))
            self._loaded[modality] = (session, contract)
        return self._loaded[modality]

    def segment(self, image: np.ndarray, modality: str, pixel_spacing_mm: tuple[float, float]) -> np.ndarray:
        """uint8 mask of global organ labels with the same height and width as ``image`` (raw units)."""
        session, contract = self.load(modality)
        network_input, box = prepare_input(image, contract)
        probabilities = session.run([PROBABILITIES], {INPUT_NAME: network_input[None]})[0][0]
        return global_labels(probabilities, box, contract)
