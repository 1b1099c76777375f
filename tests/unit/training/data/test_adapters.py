import json

import numpy as np
import pytest

from training.data.adapters.coco import load_coco, load_organ_names
from training.data.adapters.deeplesion import load_deeplesion
from training.data.adapters.vindr import load_vindr
from training.data.errors import DataError, ErrorPolicy

from tests.support.files import write_dicom, write_png

DL_HEADER = ("File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,Bounding_boxes,"
             "Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
             "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,Train_Val_Test\n")


def dl_row(name, box, coarse, size=(100, 120)):
    return (f'{name},1,1,1,5,"0, 0","{box}","12.5, 8.1","0.5, 0.5, 0.5",{coarse},0,"3, 7",'
            f'"0.8, 0.8, 5","{size[0]}, {size[1]}","-175, 275",M,50,1\n')


def test_coco_reads_modality_spacing_boxes_and_masks(coco_dataset):
    cases = load_coco(coco_dataset / "annotations.json", masks_dir=coco_dataset / "masks")
    assert [c.case_id for c in cases] == ["a", "b"]
    a = cases[0]
    assert (a.modality, a.width, a.height, a.pixel_spacing_mm) == ("ct", 80, 64, (0.8, 0.8))
    assert a.lesions[0].box_px == (15.0, 15.0, 25.0, 23.0) and a.lesions[0].label == "hypodense cyst"
    image = a.load_image()
    assert image.dtype == np.float32 and image.min() == -1000 and image.max() == 40
    assert set(np.unique(a.load_organ_mask())) == {0, 1, 2}
    assert cases[1].lesions == []
    assert load_organ_names(coco_dataset / "organs.json") == {1: "liver", 2: "spleen"}


def test_coco_polygon_segmentation_becomes_the_lesion_mask(coco_dataset):
    path = coco_dataset / "annotations.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [[15, 15, 25, 15, 25, 23, 15, 23]]
    path.write_text(json.dumps(data))
    mask = load_coco(path)[0].lesions[0].mask
    assert mask is not None and mask[19, 20] and not mask[5, 5]


def test_deeplesion_groups_rows_by_slice_and_reads_hu(tmp_path):
    images = tmp_path / "Images_png"
    write_png(images / "000001_01_01" / "109.png", np.full((120, 100), 32768 + 50, np.uint16))
    csv = tmp_path / "DL_info.csv"
    csv.write_text(DL_HEADER + dl_row("000001_01_01_109.png", "10.2, 20.5, 30.1, 40.7", 4)
                   + dl_row("000001_01_01_109.png", "70, 60, 80, 75", 6))
    (case,) = load_deeplesion(csv, images)
    assert case.modality == "ct" and case.pixel_spacing_mm == (0.8, 0.8) and (case.width, case.height) == (100, 120)
    assert [lesion.label for lesion in case.lesions] == ["liver lesion", "kidney lesion"]
    assert [lesion.organ_hint for lesion in case.lesions] == ["liver", "left kidney"]
    assert case.lesions[0].size_mm == pytest.approx(10.0)
    assert float(case.load_image().mean()) == 50.0


def test_vindr_reads_dicom_dedupes_radiologists_and_keeps_negatives(tmp_path):
    images = tmp_path / "train"
    pixels = np.zeros((60, 50), np.uint16)
    pixels[:, :25] = 4000
    write_dicom(images / "img1.dicom", pixels, spacing=(0.2, 0.2), photometric="MONOCHROME1")
    write_dicom(images / "img2.dicom", pixels)
    csv = tmp_path / "train.csv"
    csv.write_text("image_id,rad_id,class_name,class_id,x_min,y_min,x_max,y_max\n"
                   "img1,R1,Nodule/Mass,8,10,10,20,20\n"
                   "img1,R2,Nodule/Mass,8,11,10,20,21\n"
                   "img1,R3,Pleural effusion,10,30,40,48,58\n"
                   "img2,R1,No finding,14,,,,\n")
    img1, img2 = load_vindr(csv, images)
    assert [lesion.label for lesion in img1.lesions] == ["nodule", "pleural effusion"]
    assert img1.pixel_spacing_mm == (0.2, 0.2) and (img1.width, img1.height) == (50, 60)
    shown = img1.load_image()
    assert shown.dtype == np.uint8 and shown[0, 0] == 0 and shown[0, 40] == 255  # MONOCHROME1 inverted
    assert img2.lesions == []


def test_vindr_png_needs_a_pixel_spacing(tmp_path):
    write_png(tmp_path / "img.png", np.zeros((20, 20), np.uint8))
    csv = tmp_path / "a.csv"
    csv.write_text("image_id,rad_id,class_name,class_id,x_min,y_min,x_max,y_max\nimg,R1,No finding,14,,,,\n")
    with pytest.raises(DataError, match="pixel-spacing"):
        load_vindr(csv, tmp_path)
    (case,) = load_vindr(csv, tmp_path, pixel_spacing_mm=(0.5, 0.5))
    assert case.pixel_spacing_mm == (0.5, 0.5)


def test_skip_policy_counts_bad_rows_and_keeps_good_ones(tmp_path):
    images = tmp_path / "Images_png"
    write_png(images / "000001_01_01" / "109.png", np.full((120, 100), 32768, np.uint16))
    csv = tmp_path / "DL_info.csv"
    csv.write_text(DL_HEADER + dl_row("000001_01_01_109.png", "10, 20, 30, 40", 4)
                   + dl_row("000001_01_01_110.png", "not, a, box", 4))
    with pytest.raises(DataError, match=r"DL_info.csv \(row 3\)"):
        load_deeplesion(csv, images)
    policy = ErrorPolicy("skip")
    cases = load_deeplesion(csv, images, policy)
    assert len(cases) == 1 and len(policy.skipped) == 1 and "row 3" in policy.skipped[0]
