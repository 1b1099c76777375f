"""``python -m loadtests.pacs_cost``: what writing the DICOM outputs costs per request, without the engines.

Builds and encodes a DICOM SEG (six organs) and a TID 1500 SR (one finding, three reasoning steps) from
pydicom's CT_small, at its own 128 px and resized to 512 px, and prints milliseconds per object and sizes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def _milliseconds(build, repeats: int) -> float:
    build()  # warm caches and imports
    started = time.perf_counter()
    for _ in range(repeats):
        build()
    return (time.perf_counter() - started) / repeats * 1000


def measure(sizes=(128, 512), repeats: int = 10) -> list[dict]:
    """One row per image size: SEG and SR build+encode milliseconds and bytes."""
    import pydicom
    from pydicom.data import get_testdata_file

    from service.core.types import Finding
    from service.pacs.outputs import to_output
    from service.pacs.seg import build_segmentation
    from service.pacs.source import ModelIdentity
    from service.pacs.sr import build_report

    model = ModelIdentity("organ_seg_ct", "0123456789abcdef")
    rows = []
    for size in sizes:
        source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        source.Rows = source.Columns = size
        source.PixelData = np.zeros((size, size), np.int16).tobytes()
        labels = np.zeros((size, size), np.uint8)
        band = size // 8
        for label in range(1, 7):  # the six CT organs, one band each
            labels[label * band:(label + 1) * band, band:7 * band] = label
        finding = [Finding("hypodense cyst", "liver", (100, 200, 300, 400), (size * 0.1, size * 0.2, size * 0.3,
                                                                               size * 0.4))]

        def seg():
            return to_output("dicom-seg", build_segmentation(source, labels, "ct", model))

        def sr():
            return to_output("dicom-sr", build_report(source, question="Which organ contains the lesion?",
                                                      answer="liver", reasoning_steps=["one", "two", "three"],
                                                      findings=finding, modality="ct", model=model))

        rows.append({"size": size, "seg_ms": round(_milliseconds(seg, repeats), 1), "seg_bytes": len(seg().data),
                     "sr_ms": round(_milliseconds(sr, repeats), 1), "sr_bytes": len(sr().data)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the table in markdown."""
    parser = argparse.ArgumentParser(prog="python -m loadtests.pacs_cost", description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    print("| image | SEG ms | SEG bytes | SR ms | SR bytes |\n|---|---|---|---|---|")
    for row in measure(repeats=args.repeats):
        print(f"| {row['size']}² | {row['seg_ms']} | {row['seg_bytes']:,} | {row['sr_ms']} | {row['sr_bytes']:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
