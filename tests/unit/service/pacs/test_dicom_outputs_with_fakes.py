"""DICOM SEG and SR from the pipeline, with fake engines (named fakes) and real highdicom/pydicom.

The fakes answer "hypodense cyst in the liver at <box>[250, 500, 500, 750]</box>" and label the left half
of any image as liver, so every value in the written objects is known.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from service.core.types import AskRequest, ImageInput, SegmentRequest
from service.errors import ErrorCode, ServiceError
from service.pacs.dicomweb import DicomWebReference
from service.pacs.sr import polyline_box
from tests.unit.service.core.test_pipeline_with_fakes import make_pipeline, png_bytes, run

CT_SMALL = get_testdata_file("CT_small.dcm")
QUESTION = "Where is the lesion?"


def ct_small_bytes(**changes) -> bytes:
    ds = pydicom.dcmread(CT_SMALL)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ask_dicom(formats, data: bytes | None = None) -> AskRequest:
    return AskRequest(image=ImageInput(data or ct_small_bytes(), "application/dicom"), question=QUESTION,
                      output_formats=tuple(formats))


def read(output):
    return pydicom.dcmread(io.BytesIO(output.data))


def test_ask_returns_sr_then_seg_referencing_the_source_with_the_returned_boxes():
    pipeline, _, _ = make_pipeline()
    source = pydicom.dcmread(CT_SMALL)
    result = run(pipeline.ask(ask_dicom(["json", "dicom-sr", "dicom-seg"])))

    assert [o.format for o in result.dicom_outputs] == ["dicom-sr", "dicom-seg"]
    sr = hd.sr.srread(io.BytesIO(result.dicom_outputs[0].data))
    assert sr.SOPInstanceUID == result.dicom_outputs[0].sop_instance_uid
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(result.findings) == 1
    assert polyline_box(groups[0].roi.value) == pytest.approx(result.findings[0].box_px, abs=1e-4)
    assert result.findings[0].box_px == (32.0, 64.0, 64.0, 96.0)  # [250, 500, 500, 750] of a 128 px image
    assert groups[0].roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert groups[0].finding_type.meaning == "Cyst" and groups[0].finding_sites[0].value.meaning == "Liver"
    texts = [(item.ConceptNameCodeSequence[0].CodeMeaning, item.TextValue) for item in _text_items(sr)]
    assert ("Conclusion", result.answer) in texts and ("Question asked of the model", QUESTION) in texts
    assert [t for name, t in texts if name == "Model reasoning step"] == result.reasoning_steps
    ours = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "MedCLM"]
    assert ours[0].ManufacturerModelName == "medclm" and f"weights {'f' * 16}" in ours[0].SoftwareVersions

    seg = hd.seg.segread(io.BytesIO(result.dicom_outputs[1].data))
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert seg.get_source_image_uids()[0][2] == source.SOPInstanceUID
    assert (seg.Rows, seg.Columns) == (source.Rows, source.Columns)
    frame = seg.PerFrameFunctionalGroupsSequence[0]
    assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == \
        [float(v) for v in source.ImagePositionPatient]
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [float(v) for v in source.PixelSpacing]
    mask = seg.get_pixels_by_source_instance([source.SOPInstanceUID], combine_segments=True)[0]
    expected = np.zeros((128, 128), np.uint8)
    expected[:, :64] = 1  # the fake segmenter's liver, segment 1
    assert np.array_equal(mask, expected)


def _text_items(sr):
    container = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"]
    return [item for item in container[0].ContentSequence if item.ValueType == "TEXT"]


def test_segment_returns_a_seg_whose_mask_is_the_label_map():
    pipeline, _, _ = make_pipeline()
    result = run(pipeline.segment(SegmentRequest(ImageInput(ct_small_bytes(), "application/dicom"),
                                                 output_formats=("dicom-seg",))))
    (output,) = result.dicom_outputs
    seg = hd.seg.segread(io.BytesIO(output.data))
    mask = seg.get_pixels_by_source_instance([seg.get_source_image_uids()[0][2]], combine_segments=True)[0]
    assert np.array_equal(mask > 0, result.labels > 0) and output.sop_class_uid == seg.SOPClassUID


@pytest.mark.parametrize("request_factory, field", [
    (lambda: AskRequest(image=ImageInput(png_bytes(64, 64), "image/png"), question=QUESTION,
                        output_formats=("dicom-sr",)), "output_formats"),
    (lambda: ask_dicom(["json", "dicom-xml"]), "output_formats[1]"),
    (lambda: AskRequest(image=ImageInput(b"", "application/dicom", dicomweb=DicomWebReference(
        "http://127.0.0.1:1/dicom-web", "1.2", "1.2.3", "1.2.3.4", store_results=True)), question=QUESTION),
     "image.dicomweb.store_results"),
    (lambda: AskRequest(image=ImageInput(b"", "application/dicom", dicomweb=DicomWebReference(
        "http://pacs.example.org/dicom-web", "1.2", "1.2.3", "1.2.3.4")), question=QUESTION),
     "image.dicomweb.base_url"),
])
def test_bad_output_requests_are_refused_before_the_engine_runs(request_factory, field):
    pipeline, vqa, _ = make_pipeline()
    with pytest.raises(ServiceError) as error:
        run(pipeline.ask(request_factory()))
    assert error.value.code is ErrorCode.INVALID_ARGUMENT and error.value.field == field
    assert vqa.calls == 0


def test_a_source_without_study_uid_is_refused_before_generation():
    pipeline, vqa, _ = make_pipeline()
    with pytest.raises(ServiceError) as error:
        run(pipeline.ask(ask_dicom(["dicom-sr"], ct_small_bytes(StudyInstanceUID=None))))
    assert error.value.code is ErrorCode.INVALID_ARGUMENT and "StudyInstanceUID" in error.value.message
    assert vqa.calls == 0


def test_segment_cannot_write_a_report():
    pipeline, _, seg = make_pipeline()
    with pytest.raises(ServiceError) as error:
        run(pipeline.segment(SegmentRequest(ImageInput(ct_small_bytes(), "application/dicom"),
                                            output_formats=("json", "dicom-sr"))))
    assert error.value.field == "output_formats[1]" and seg.calls == 0


def test_an_answer_without_boxes_still_gives_a_valid_report():
    pipeline, vqa, _ = make_pipeline()
    vqa.text = "Reasoning:\n1. The image is an axial abdominal CT slice.\n2. No lesion is seen.\nAnswer: no"
    result = run(pipeline.ask(ask_dicom(["dicom-sr"])))
    sr = hd.sr.srread(io.BytesIO(result.dicom_outputs[0].data))
    assert result.findings == [] and sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert group.source_images[0].referenced_sop_instance_uid == pydicom.dcmread(CT_SMALL).SOPInstanceUID
    assert ("Conclusion", "no") in [(i.ConceptNameCodeSequence[0].CodeMeaning, i.TextValue) for i in _text_items(sr)]
