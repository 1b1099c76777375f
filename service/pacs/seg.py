"""DICOM SEG of an organ segmentation: one segment per organ present, coded anatomy, referencing the source.

The mask is the segmenter's label map at the source's own size, so the SEG frame has the source frame's
geometry exactly (same rows, columns, pixel spacing, position and orientation where the source has them).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.uid import generate_uid

from service.errors import invalid
from service.pacs.codes import ANATOMICAL_STRUCTURE, ARTIFICIAL_INTELLIGENCE, PROCESSING_EQUIPMENT, organ_code
from service.pacs.source import MANUFACTURER, ModelIdentity, check_source
from training.data.anatomy import ORGAN_BY_LABEL, organs_for

SEG_SERIES_NUMBER = 9001  # high, so viewers list derived series after the acquired ones
SEG_SERIES_DESCRIPTION = "MedCLM organ segmentation"


def organ_segments(labels: np.ndarray, modality: str) -> list[tuple[int, str]]:
    """(global label, organ name) of each organ present in ``labels``, in label order. An image with no organ
    found lists every organ of the modality instead, so the SEG still says what was looked for (all empty)."""
    present = [int(v) for v in np.unique(labels) if v and int(v) in ORGAN_BY_LABEL]
    if present:
        return [(label, ORGAN_BY_LABEL[label].name) for label in present]
    try:
        return [(o.label, o.name) for o in organs_for(modality)]
    except ValueError:
        return []


def build_segmentation(source, labels: np.ndarray, modality: str, model: ModelIdentity, frame: int = 0,
                       ) -> hd.seg.Segmentation:
    """A binary DICOM SEG of ``labels`` ((rows, columns) global organ labels for frame ``frame`` of ``source``).

    Segment ``i`` is the i-th organ of :func:`organ_segments`, labelled with the organ's name and typed with its
    SNOMED CT code; the algorithm (the segmenter and its weights' fingerprint) is named in every segment and in
    the contributing equipment. INVALID_ARGUMENT when the source lacks what a SEG must reference.
    """
    check_source(source)
    rows, columns = int(source.Rows), int(source.Columns)
    if labels.shape != (rows, columns):
        raise invalid(f"the mask is {labels.shape[1]}x{labels.shape[0]} but the source frame is {columns}x{rows}",
                      "image")
    segments = organ_segments(labels, modality)
    if not segments:
        raise invalid(f"no organ segments are defined for modality {modality.upper()}", "image")
    algorithm = hd.AlgorithmIdentificationSequence(name=model.name, family=ARTIFICIAL_INTELLIGENCE,
                                                   version=model.fingerprint or "unknown")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=ANATOMICAL_STRUCTURE,
            segmented_property_type=organ_code(name), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm)
        for number, (_label, name) in enumerate(segments, start=1)]
    lookup = np.zeros(256, dtype=np.uint8)  # global organ label -> segment number (0 = background)
    for number, (label, _name) in enumerate(segments, start=1):
        lookup[label] = number
    segment_map = lookup[labels.astype(np.uint8)]
    frames = int(source.get("NumberOfFrames", 1) or 1)
    if frames > 1:  # the mask belongs to one frame; the others stay empty and are omitted
        stack = np.zeros((frames, rows, columns), dtype=np.uint8)
        stack[frame] = segment_map
        segment_map = stack
    equipment = hd.ContributingEquipment(MANUFACTURER, PROCESSING_EQUIPMENT, manufacturer_model_name=model.name,
                                         software_versions=model.software_versions,
                                         contribution_description="organ segmentation")
    try:
        return hd.seg.Segmentation(
            source_images=[source], pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name=model.name, software_versions=model.software_versions,
            device_serial_number=model.fingerprint or "unknown", series_description=SEG_SERIES_DESCRIPTION,
            content_label="ORGANS", content_description="Organ segmentation by MedCLM",
            # highdicom needs one frame at least: a map with no organ keeps its (empty) frames
            omit_empty_frames=bool(segment_map.any()), contributing_equipment=[equipment])
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        # highdicom names the attribute or geometry it could not use; that is a property of the input file
        raise invalid(f"cannot derive a DICOM SEG from this source: {error}", "image") from None
