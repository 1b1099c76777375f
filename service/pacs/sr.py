"""DICOM SR of one answered question: a TID 1500 measurement report (Comprehensive 3D SR).

Each finding the model boxed becomes a planar ROI group (TID 1410): the box as a closed POLYLINE image region
in the source's pixel coordinates, the finding type, and the host organ its reasoning names as the finding
site; an answer without boxes gets one image-level group (TID 1501) instead.
The answer (coded as the report's conclusion), the question and each reasoning step are TEXT items in the
template's "Qualitative Evaluations" container. The model is the report's device observer and is listed in
the contributing equipment.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from service.core.types import Finding
from service.errors import invalid
from service.pacs.codes import (CONCLUSION, PROCESSING_EQUIPMENT, QUALITATIVE_EVALUATIONS, QUESTION, REASONING_STEP,
                                finding_code, organ_code, procedure_code)
from service.pacs.source import MANUFACTURER, ModelIdentity, check_source

SR_SERIES_NUMBER = 9002
SR_SERIES_DESCRIPTION = "MedCLM findings"
MAX_LO = 64  # characters of a DICOM LO value (the tracking identifier)


def box_polyline(box_px: tuple[float, float, float, float]) -> np.ndarray:
    """A box as a closed polyline of (column, row) points. DICOM image coordinates put (0, 0) at the top-left
    CORNER of the first pixel, so a box with exclusive x2/y2 maps onto its corners unchanged."""
    x1, y1, x2, y2 = (float(v) for v in box_px)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float32)


def polyline_box(points: np.ndarray) -> tuple[float, float, float, float]:
    """The (x1, y1, x2, y2) box a closed rectangular polyline from :func:`box_polyline` encloses."""
    points = np.asarray(points, dtype=np.float64)
    return (float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()),
            float(points[:, 1].max()))


def _finding_group(index: int, finding: Finding, source_region: hd.sr.SourceImageForRegion,
                   algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    name = finding.label or "lesion"
    identifier = f"finding {index + 1}: {name}" + (f" in {finding.organ}" if finding.organ else "")
    site = organ_code(finding.organ) if finding.organ else None
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                               graphic_data=box_polyline(finding.box_px), source_image=source_region)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=identifier[:MAX_LO]),
        referenced_region=region, finding_type=finding_code(finding.label), algorithm_id=algorithm,
        finding_sites=[hd.sr.FindingSite(site)] if site is not None else None)


def _image_group(source, algorithm: hd.sr.AlgorithmIdentification,
                 ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """An image-level group (TID 1501) for an answer without boxes: TID 1500 needs at least one group."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="answer without boxed findings"),
        algorithm_id=algorithm, source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])


def _text_container(question: str, answer: str, reasoning_steps: Sequence[str]) -> hd.sr.ContainerContentItem:
    items = [hd.sr.TextContentItem(name=QUESTION, value=question, relationship_type="CONTAINS")]
    items += [hd.sr.TextContentItem(name=REASONING_STEP, value=step, relationship_type="CONTAINS")
              for step in reasoning_steps if step.strip()]
    if answer.strip():
        items.append(hd.sr.TextContentItem(name=CONCLUSION, value=answer, relationship_type="CONTAINS"))
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_report(source, *, question: str, answer: str, reasoning_steps: Sequence[str], findings: Sequence[Finding],
                 modality: str, model: ModelIdentity, frame: int = 0) -> hd.sr.Comprehensive3DSR:
    """A TID 1500 report of one answer about frame ``frame`` of ``source`` (see the module docstring).

    INVALID_ARGUMENT when the source lacks what a report must reference.
    """
    check_source(source)
    frames = int(source.get("NumberOfFrames", 1) or 1)
    source_region = hd.sr.SourceImageForRegion.from_source_image(
        source, referenced_frame_numbers=[frame + 1] if frames > 1 else None)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=model.name, manufacturer_name=MANUFACTURER, model_name=model.name,
            serial_number=model.fingerprint or "unknown"))
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.fingerprint or "unknown")
    groups = [_finding_group(i, f, source_region, algorithm) for i, f in enumerate(findings)]
    groups = groups or [_image_group(source, algorithm)]
    equipment = hd.ContributingEquipment(MANUFACTURER, PROCESSING_EQUIPMENT, manufacturer_model_name=model.name,
                                         software_versions=model.software_versions,
                                         contribution_description="visual question answering")
    try:
        report = hd.sr.MeasurementReport(
            observation_context=hd.sr.ObservationContext(observer_device_context=observer),
            procedure_reported=procedure_code(modality), imaging_measurements=groups,
            referenced_images=[source])
        report[0].ContentSequence.append(_text_container(question, answer, reasoning_steps))
        return hd.sr.Comprehensive3DSR(
            evidence=[source], content=report[0], series_instance_uid=generate_uid(),
            series_number=SR_SERIES_NUMBER, sop_instance_uid=generate_uid(), instance_number=1,
            manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
            series_description=SR_SERIES_DESCRIPTION, contributing_equipment=[equipment])
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        raise invalid(f"cannot derive a DICOM SR from this source: {error}", "image") from None
