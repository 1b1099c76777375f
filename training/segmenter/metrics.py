"""Dice and HD95 per organ, in millimetres when the pixel spacing is known."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty.

    Slices where an organ is absent and correctly not predicted are left out of the means (MONAI's
    ``ignore_empty``) rather than counted as perfect, which would flatter the score.
    """
    p, t = prediction.astype(bool), truth.astype(bool)
    total = p.sum() + t.sum()
    if total == 0:
        return float("nan")
    return float(2.0 * np.logical_and(p, t).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing_mm: tuple[float, float] = (1.0, 1.0)) -> float:
    """95th-percentile symmetric Hausdorff distance between mask surfaces, in mm.

    Returns 0 when both masks are empty and ``inf`` when exactly one is (a missed or hallucinated organ).
    """
    p, t = prediction.astype(bool), truth.astype(bool)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("inf")
    ps, ts = _surface(p), _surface(t)
    # Distance from every pixel to the nearest surface pixel of the other mask, anisotropic spacing aware.
    to_t = ndimage.distance_transform_edt(~ts, sampling=spacing_mm)
    to_p = ndimage.distance_transform_edt(~ps, sampling=spacing_mm)
    distances = np.concatenate([to_t[ps], to_p[ts]])
    return float(np.percentile(distances, 95))


def organ_scores(prediction: np.ndarray, truth: np.ndarray, num_classes: int,
                 spacing_mm: tuple[float, float]) -> tuple[list[float], list[float]]:
    """(Dice per class 1..K-1, HD95 per class 1..K-1) for one image's class-index masks."""
    dices, hds = [], []
    for c in range(1, num_classes):
        dices.append(dice(prediction == c, truth == c))
        hds.append(hd95(prediction == c, truth == c, spacing_mm))
    return dices, hds


def summarise(per_image_dice: list[list[float]], per_image_hd: list[list[float]],
              organ_names: list[str]) -> dict:
    """Mean per organ over images (where the organ is present in truth or prediction) and the mean over
    organs; HD95 means skip images where it is infinite (counted in ``hd95_missing``) or undefined."""
    d = np.asarray(per_image_dice, dtype=np.float64)
    h = np.asarray(per_image_hd, dtype=np.float64)
    finite = np.isfinite(h) & ~np.isnan(d)  # both-empty slices have HD95 0 but carry no information
    hd_mean = [float(h[finite[:, i], i].mean()) if finite[:, i].any() else float("inf") for i in range(h.shape[1])]
    present = ~np.isnan(d)
    organ_dice = [float(d[present[:, i], i].mean()) if present[:, i].any() else float("nan") for i in range(d.shape[1])]
    per_organ = {name: {"dice": organ_dice[i], "hd95_mm": hd_mean[i], "images": int(present[:, i].sum()),
                        "hd95_missing": int((np.isinf(h[:, i])).sum())}
                 for i, name in enumerate(organ_names)}
    measured_hd = [v for v in hd_mean if np.isfinite(v)]
    return {
        "images": int(d.shape[0]),
        "mean_dice": float(np.nanmean(organ_dice)),
        "mean_hd95_mm": float(np.mean(measured_hd)) if measured_hd else float("inf"),
        "per_organ": per_organ,
    }
