"""Images and questions the load is made of: phantoms from the data engine, a built dataset, or a folder.

Every source yields :class:`InputImage` objects holding the encoded file exactly as a caller would send it
(PNG / JPEG / DICOM bytes), its media type, a modality hint and the questions that can be asked about it.
Phantom CT slices are 16-bit PNGs holding HU + 1024, as the data engine writes them, so the service reads
them as CT; chest radiographs are 8-bit PNGs.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".dcm": "application/dicom"}
# Asked about images from a folder (no annotations, so no lesion names are known).
GENERIC_QUESTIONS = ("How many lesions are visible in this image?",
                     "Is any focal lesion visible in this image?")


class InputError(ValueError):
    """The inputs cannot be loaded (missing folder, no images, bad size)."""


@dataclass(frozen=True)
class InputImage:
    """One image as sent over the wire, with the questions the load may ask about it."""

    name: str
    data: bytes
    media_type: str
    modality: str  # "ct" / "cxr" hint for PNG/JPEG, "" to let the service infer it
    questions: tuple[str, ...]


def png_bytes(pixels: np.ndarray) -> bytes:
    """Uncompressed-ish PNG of a uint8 or uint16 array (fast to write; the service decodes either)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def resize_pixels(pixels: np.ndarray, side: int) -> np.ndarray:
    """``pixels`` stretched to ``side`` x ``side`` with bilinear interpolation, keeping the dtype (uint8 or
    uint16), so images of any size can be made from the same anatomy."""
    if side < 16:
        raise InputError(f"--image-side must be at least 16, not {side}")
    resized = Image.fromarray(pixels.astype(np.float32), mode="F").resize((side, side), Image.BILINEAR)
    info = np.iinfo(pixels.dtype)
    return np.clip(np.rint(np.asarray(resized)), info.min, info.max).astype(pixels.dtype)


def _phantom_questions(case) -> tuple[str, ...]:
    """Questions of the data engine's templates about this case (count, presence, grounding)."""
    from training.data.questions import COUNT, GROUNDING, PRESENCE

    questions = [COUNT[0]]
    if case.lesions:
        lesion = case.lesions[0]
        questions.append(PRESENCE[0].format(organ=lesion.host_organ))
        questions.append(GROUNDING[0].format(label=lesion.label))
    else:
        questions.append(PRESENCE[0].format(organ="liver" if case.modality == "ct" else "right lung"))
    return tuple(questions)


def phantom_inputs(count: int, seed: int = 1, side: int | None = None,
                   modalities: tuple[str, ...] = ("ct", "cxr")) -> list[InputImage]:
    """``count`` phantoms from the data engine (modalities alternating), encoded as the dataset stores them."""
    from training.data.phantoms import CT_PNG_OFFSET, generate_case

    if count < 1:
        raise InputError("at least one input image is needed")
    inputs = []
    for index in range(count):
        modality = modalities[index % len(modalities)]
        case = generate_case(modality, seed, index)
        if modality == "ct":
            pixels = np.clip(case.image.astype(np.int32) + CT_PNG_OFFSET, 0, 65535).astype(np.uint16)
        else:
            pixels = case.image
        if side:
            pixels = resize_pixels(pixels, side)
        inputs.append(InputImage(f"phantom_{modality}_{index:03d}", png_bytes(pixels), "image/png", modality,
                                 _phantom_questions(case)))
    return inputs


def dataset_inputs(folder: Path, count: int, split: str = "test", side: int | None = None) -> list[InputImage]:
    """Images and their questions from a dataset built by ``python -m training.data build``: the images of
    ``{split}.jsonl`` first, then those of the other splits until ``count`` are found."""
    folder = Path(folder)
    records: dict[str, dict] = {}
    for name in dict.fromkeys((split, "test", "val", "train")):
        path = folder / f"{name}.jsonl"
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record["image"] not in records and len(records) >= count:
                continue
            entry = records.setdefault(record["image"], {"modality": record["modality"], "questions": []})
            entry["questions"].append(record["question"])
    if not records:
        raise InputError(f"{folder} holds no dataset records ({split}.jsonl); build one with python -m training.data")
    inputs = []
    for image, entry in records.items():
        data = (folder / image).read_bytes()
        if side:
            data = png_bytes(resize_pixels(np.asarray(Image.open(io.BytesIO(data))), side))
        questions = tuple(dict.fromkeys(entry["questions"]))[:4]
        inputs.append(InputImage(Path(image).stem, data, "image/png", entry["modality"], questions))
    return inputs


def media_type_of(path: Path, data: bytes) -> str | None:
    """PNG / JPEG / DICOM from the leading bytes (DICOM files often lack a suffix), else from the suffix."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[128:132] == b"DICM":
        return "application/dicom"
    return IMAGE_SUFFIXES.get(path.suffix.lower())


def folder_inputs(folder: Path, count: int, questions: tuple[str, ...] = GENERIC_QUESTIONS,
                  modality: str = "") -> list[InputImage]:
    """The user's own images (PNG, JPEG, DICOM) from ``folder``, each asked ``questions``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a folder")
    inputs = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        data = path.read_bytes()
        media_type = media_type_of(path, data)
        if media_type is None:
            continue
        inputs.append(InputImage(path.name, data, media_type, modality, tuple(questions)))
        if len(inputs) >= count:
            break
    if not inputs:
        raise InputError(f"--images {folder} holds no PNG, JPEG or DICOM file")
    return inputs
