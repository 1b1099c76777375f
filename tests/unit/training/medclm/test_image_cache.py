"""The image cache gives exactly what the checkpoint's image processor gives, while holding 8-bit pixels."""

from __future__ import annotations

import torch

from training.medclm.data import ImageCache, load_model_image, record_image_path
from training.medclm.model import build_image_processor


def _processor_output(processor, root, record):
    image = load_model_image(root / record_image_path(record), record.modality)
    return processor(images=image, return_tensors="pt")["pixel_values"][0]


def test_cache_equals_the_processor_and_stores_gray_images_as_one_byte_channel(tiny_data, tiny_records):
    processor = build_image_processor(64)
    cache = ImageCache(tiny_data, processor)
    easy = next(r for r in tiny_records if r.stage == "easy")  # boxes drawn in colour: three channels
    clean = [r for r in tiny_records if r.stage == "medium"][:4] + [easy]
    for record in clean:
        got = cache.get(record_image_path(record), record.modality)
        assert got.dtype == torch.float32 and got.shape == (3, 64, 64)
        assert torch.equal(got, _processor_output(processor, tiny_data, record)), record.id
    stored = cache._cache
    assert all(t.dtype == torch.uint8 for t in stored.values())
    assert stored[record_image_path(easy)].shape[0] == 3
    assert all(stored[record_image_path(r)].shape[0] == 1 for r in clean[:4])
    # A returned tensor is the caller's: changing it leaves the cache alone.
    got = cache.get(record_image_path(easy), easy.modality)
    got.zero_()
    assert torch.equal(cache.get(record_image_path(easy), easy.modality), _processor_output(processor, tiny_data, easy))


class FakeFloatResizeProcessor:
    """A fake processor whose resized pixels are not whole numbers (as a float-resizing backend's would be)."""

    def __init__(self, real):
        self.real = real

    def __call__(self, images, do_rescale=True, do_normalize=True, **kwargs):
        out = self.real(images=images, do_rescale=do_rescale, do_normalize=do_normalize, **kwargs)
        if not do_rescale and not do_normalize:
            out["pixel_values"] = out["pixel_values"].float() + 0.25
        return out


def test_processor_the_table_cannot_reproduce_gets_its_floats_cached(tiny_data, tiny_records):
    processor = build_image_processor(64)
    cache = ImageCache(tiny_data, FakeFloatResizeProcessor(processor))
    record = next(r for r in tiny_records if r.stage == "medium")
    got = cache.get(record_image_path(record), record.modality)
    assert cache._compact is False
    assert torch.equal(got, _processor_output(processor, tiny_data, record))
