"""Wire ↔ dataclass converters, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from service.core.types import AskEvent, DicomOutput, OrganMask, SegmentResult, Timings
from service.grpc import convert
from service.grpc.gen import medclm_pb2 as pb
from service.pacs.dicomweb import DicomWebReference

from tests.unit.service.grpc.conftest import canned_ask_result


def test_unset_optionals_take_the_core_defaults():
    request = convert.ask_request_from_pb(pb.AskRequest(question="q"))
    assert (request.max_tokens, request.temperature, request.seed) == (0, 0.0, None)
    assert request.verify_grounding is True and request.reasoning is True
    assert request.request_id == "" and request.deadline is None


def test_explicit_falsy_optionals_are_kept():
    request = convert.ask_request_from_pb(pb.AskRequest(seed=0, verify_grounding=False, temperature=0.0, brief=True))
    assert request.seed == 0 and request.verify_grounding is False and request.reasoning is False


def test_values_are_passed_through_for_the_core_to_judge():
    message = pb.AskRequest(image=pb.Image(data=b"x", media_type="image/gif", frame=7, modality="mr"),
                            precision="fp64", seed=-5, max_tokens=10**6)
    request = convert.ask_request_from_pb(message, request_id="r1", deadline=12.5)
    assert (request.image.media_type, request.image.frame, request.image.modality) == ("image/gif", 7, "mr")
    assert (request.precision, request.seed, request.max_tokens) == ("fp64", -5, 10**6)
    assert (request.request_id, request.deadline) == ("r1", 12.5)


def test_output_formats_and_a_dicomweb_reference_reach_the_core():
    reference = pb.DicomWebReference(base_url="http://127.0.0.1:8042/dicom-web", study_instance_uid="1.2",
                                     series_instance_uid="1.2.3", sop_instance_uid="1.2.3.4", store_results=True)
    request = convert.ask_request_from_pb(pb.AskRequest(image=pb.Image(dicomweb=reference),
                                                        output_formats=["dicom-sr", "bogus"]))
    assert request.output_formats == ("dicom-sr", "bogus")  # the core judges the names
    assert request.image.media_type == "application/dicom" and request.image.data == b""
    assert request.image.dicomweb == DicomWebReference("http://127.0.0.1:8042/dicom-web", "1.2", "1.2.3",
                                                       "1.2.3.4", store_results=True)
    segment = convert.segment_request_from_pb(pb.SegmentRequest(image=pb.Image(data=b"x"),
                                                                output_formats=["dicom-seg"]))
    assert segment.output_formats == ("dicom-seg",) and segment.image.dicomweb is None


def test_dicom_outputs_travel_as_bytes_with_their_uids():
    result = canned_ask_result("r")
    result.dicom_outputs = [DicomOutput("dicom-sr", b"DICM-bytes", "1.2.840.10008.5.1.4.1.1.88.34", "9.8", "9.7",
                                        stored=True)]
    (message,) = convert.ask_result_to_pb(result).dicom_outputs
    assert (message.format, message.data, message.sop_instance_uid, message.series_instance_uid, message.stored) == \
        ("dicom-sr", b"DICM-bytes", "9.8", "9.7", True)


@pytest.mark.parametrize("wire, expected", [(pb.MASK_FORMAT_UNSPECIFIED, "png"), (pb.MASK_FORMAT_PNG, "png"),
                                            (pb.MASK_FORMAT_RLE, "rle"), (7, "7")])
def test_mask_format_enum(wire, expected):
    assert convert.segment_request_from_pb(pb.SegmentRequest(mask_format=wire)).mask_format == expected


def test_stream_event_carries_either_delta_or_result():
    assert convert.ask_event_to_pb(AskEvent(delta="abc")).WhichOneof("event") == "delta"
    final = convert.ask_event_to_pb(AskEvent(result=canned_ask_result("r")))
    assert final.WhichOneof("event") == "result" and final.result.request_id == "r"


def test_segment_without_spacing_leaves_spacing_and_area_unset():
    organ = OrganMask(label=3, name="spleen", pixel_count=4, area_mm2=None, box_px=(1, 2, 3, 4), mask_rle=[5, 4, 7])
    result = SegmentResult(request_id="r", model="m", fingerprint="f", modality="cxr", width=4, height=4,
                           pixel_spacing_mm=None, organs=[organ], labels=np.zeros((4, 4), np.uint8), timings=Timings())
    message = convert.segment_result_to_pb(result)
    assert not message.HasField("pixel_spacing_mm")
    assert not message.organs[0].HasField("area_mm2")
    assert list(message.organs[0].mask_rle) == [5, 4, 7] and message.organs[0].mask_png == b""
