"""/v1/segment: masks as base64 PNG or run lengths, JSON or multipart."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from service.core.masks import decode_rle
from tests.unit.service.http.fake_core import IMAGE_SIZE, ask_json, canned_labels, png_bytes

WIDTH, HEIGHT = IMAGE_SIZE


def test_png_masks_decode_to_the_organs(client, fake_core):
    response = client.post("/v1/segment", json={"image": ask_json()["image"], "precision": "fp16"},
                           headers={"X-Request-ID": "seg-1"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["request_id"], body["mask_format"], body["width"], body["height"]) == ("seg-1", "png", WIDTH, HEIGHT)
    assert body["pixel_spacing_mm"] == [0.5, 0.5]
    labels = canned_labels()
    for organ in body["organs"]:
        assert organ["mask_rle"] is None
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(organ["mask_png_base64"]))))
        assert mask.shape == (HEIGHT, WIDTH)
        assert np.array_equal(mask == 255, labels == organ["label"])
    assert body["organs"][0]["box_px"] == {"x1": 10, "y1": 5, "x2": 30, "y2": 20}
    sent = fake_core.segments[0]
    assert (sent.precision, sent.mask_format, sent.request_id) == ("fp16", "png", "seg-1")


def test_rle_masks_decode_to_the_organs(client):
    body = client.post("/v1/segment", json={"image": ask_json()["image"], "mask_format": "rle"}).json()

    labels = canned_labels()
    assert body["mask_format"] == "rle"
    for organ in body["organs"]:
        assert organ["mask_png_base64"] is None
        assert np.array_equal(decode_rle(organ["mask_rle"], HEIGHT, WIDTH), labels == organ["label"])
        assert organ["pixel_count"] == int((labels == organ["label"]).sum())


def test_multipart_segment(client, fake_core):
    response = client.post("/v1/segment", files={"image": ("x.png", png_bytes(), "image/png")},
                           data={"mask_format": "rle", "model": "organ_seg_ct"},
                           headers={"X-Request-Timeout": "5"})

    assert response.status_code == 200, response.text
    sent = fake_core.segments[0]
    assert (sent.image.data, sent.mask_format, sent.model) == (png_bytes(), "rle", "organ_seg_ct")
    assert sent.deadline is not None


def test_unknown_mask_format_is_422(client, fake_core):
    response = client.post("/v1/segment", json={"image": ask_json()["image"], "mask_format": "nifti"})

    assert response.status_code == 422 and response.json()["error"]["field"] == "mask_format"
    assert fake_core.segments == []
