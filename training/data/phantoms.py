"""Synthetic axial abdominal CT slices and PA chest radiographs with organ masks and lesions.

The phantoms stand in for a lesion detection dataset (DeepLesion-like CT, VinDr-like chest X-ray) while
no patient data is at hand: every case carries a global-label organ mask (``anatomy.py``) and 0–3 lesions
of organ-plausible types placed inside their host organs, so the data engine, the organ segmenter and the
service can be exercised end to end. A case is a pure function of ``(modality, seed, index)``.

Geometry is analytic. Each case builds one coordinate grid in millimetres that is shifted, rotated and
elastically deformed; every shape is evaluated on that grid, so image and labels deform together and stay
exactly aligned without resampling. Radiological convention: image columns run towards the patient's
LEFT, image rows towards posterior (CT) or inferior (CXR).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path

import contourpy  # a hard dependency of matplotlib, which the project already requires
import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from service.imaging.windowing import PNG_HU_OFFSET
from training.data.anatomy import FINDING_TYPES, ORGAN_BY_NAME, findings_for, organ_names_json, organs_for

PHANTOM_SIZES: dict[str, tuple[int, int | None]] = {"ct": (256, 256), "cxr": (320, None)}
CXR_WIDTH_RANGE = (256, 288)  # inclusive; non-square on purpose so letterboxing gets exercised
CT_SPACING_RANGE_MM = (1.2, 1.7)
CXR_SPACING_RANGE_MM = (1.2, 1.5)
NO_LESION_SHARE = 0.25  # true negatives for closed questions
HU_MIN, HU_MAX = -1024, 3071
CT_PNG_OFFSET = PNG_HU_OFFSET  # CT PNGs store HU + 1024 as uint16 (the one offset every reader uses)

_MODALITY_CODE = {"ct": 1, "cxr": 2}
_VIEW = {"ct": "axial", "cxr": "PA"}
_DICOM_MODALITY = {"ct": "CT", "cxr": "CXR"}


@dataclasses.dataclass
class PhantomLesion:
    """One lesion of a phantom case, with its ground-truth host organ."""

    label: str  # FindingType.name
    host_organ: str  # organ name it was placed in
    mask: np.ndarray  # bool (H, W)
    box_px: tuple[int, int, int, int]  # tight (x1, y1, x2, y2), x2/y2 exclusive
    size_mm: float  # longest diameter


@dataclasses.dataclass
class PhantomCase:
    """One synthetic image with its organ mask and lesions."""

    modality: str  # "ct" | "cxr"
    image: np.ndarray  # ct: int16 HU; cxr: uint8 MONOCHROME2
    organ_mask: np.ndarray  # uint8 (H, W), global labels from anatomy.py
    lesions: list[PhantomLesion]
    pixel_spacing_mm: tuple[float, float]  # (row, col)
    view: str  # "axial" | "PA"


def generate_case(modality: str, seed: int, index: int) -> PhantomCase:
    """Generate one phantom case; deterministic for ``(modality, seed, index)``."""
    organs_for(modality)  # validates the modality
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    rng = np.random.default_rng([seed, index, _MODALITY_CODE[modality]])
    if modality == "ct":
        image, labels, spacing = _ct_anatomy(rng)
        lesions = _add_lesions(rng, "ct", image, labels, spacing, _draw_ct_lesion)
        image += np.float32(rng.uniform(5.0, 15.0)) * rng.standard_normal(image.shape, dtype=np.float32)
        pixels = np.clip(np.rint(image), HU_MIN, HU_MAX).astype(np.int16)
    else:
        image, labels, spacing = _cxr_anatomy(rng)
        lesions = _add_lesions(rng, "cxr", image, labels, spacing, _draw_cxr_lesion)
        image = image * rng.uniform(0.92 * 255.0, 1.04 * 255.0) + rng.uniform(-0.02 * 255.0, 0.03 * 255.0)
        image += np.float32(rng.uniform(1.5, 4.5)) * rng.standard_normal(image.shape, dtype=np.float32)
        # Detector response differs between machines; a gamma lookup on the 8-bit values is cheap.
        gamma_lut = np.rint(255.0 * np.linspace(0.0, 1.0, 256) ** rng.uniform(0.85, 1.15)).astype(np.uint8)
        pixels = gamma_lut[np.clip(np.rint(image), 0, 255).astype(np.uint8)]
    return PhantomCase(modality, pixels, labels, lesions, (spacing, spacing), _VIEW[modality])


# --------------------------------------------------------------------------------------------- geometry

_Window = tuple[slice, slice]


@dataclasses.dataclass
class _Grid:
    """Per-pixel patient-frame coordinates (mm) of one case, and how to find the pixels of a region."""

    x: np.ndarray  # towards image right (patient left)
    y: np.ndarray  # towards image bottom
    row_mm: np.ndarray  # undeformed image row position, for gravity-dependent features
    spacing: float
    shift: tuple[float, float]  # (x, y) mm
    cos_sin: tuple[float, float]
    slack_mm: float  # largest elastic displacement, so windows never cut a shape

    def box(self, x0: float, x1: float, y0: float, y1: float) -> _Window:
        """Pixel window covering the patient-frame rectangle [x0, x1] × [y0, y1]."""
        c, s = self.cos_sin
        px = np.array([x0, x1, x0, x1])
        py = np.array([y0, y0, y1, y1])
        cols = (c * px - s * py + self.shift[0]) / self.spacing + (self.x.shape[1] - 1) / 2
        rows = (s * px + c * py + self.shift[1]) / self.spacing + (self.x.shape[0] - 1) / 2
        pad = self.slack_mm / self.spacing + 1.0
        h, w = self.x.shape
        r0, r1 = max(0, int(rows.min() - pad)), min(h, int(math.ceil(rows.max() + pad)) + 1)
        c0, c1 = max(0, int(cols.min() - pad)), min(w, int(math.ceil(cols.max() + pad)) + 1)
        return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))

    def ellipse(self, cx: float, cy: float, a: float, b: float, theta: float = 0.0,
                window: _Window | None = None) -> tuple[_Window, np.ndarray]:
        """Squared normalised radius of a rotated ellipse (semi-axis ``a`` along ``theta``) on a window."""
        if window is None:
            r = max(a, b)
            window = self.box(cx - r, cx + r, cy - r, cy + r)
        c, s = math.cos(theta), math.sin(theta)
        dx, dy = self.x[window] - cx, self.y[window] - cy
        u = (dx * c + dy * s) / a
        v = (dy * c - dx * s) / b
        return window, u * u + v * v


def _smooth_fields(rng: np.random.Generator, shape: tuple[int, int], cells: int, channels: int) -> np.ndarray:
    """Smooth random fields with unit variance: Gaussian bumps on a coarse lattice, built separably."""

    def basis(n: int) -> np.ndarray:
        t = (np.arange(n, dtype=np.float32) + 0.5) / n
        centres = np.linspace(-1.0 / cells, 1.0 + 1.0 / cells, cells + 2, dtype=np.float32)
        k = np.exp(-0.5 * ((t[:, None] - centres[None, :]) * cells) ** 2)
        k[k < 1e-6] = 0.0  # keeps denormals, which are slow to compute with, out of the products
        return k / np.sqrt((k**2).sum(axis=1, keepdims=True))

    weights = rng.standard_normal((channels, cells + 2, cells + 2), dtype=np.float32)
    left, right = basis(shape[0]), weights @ basis(shape[1]).T
    # Row blocks small enough that OpenBLAS stays single-threaded: its threads would only compete with
    # the worker pool for the same cores.
    step = max(1, 150_000 // (shape[1] * (cells + 2)))
    out = np.empty((channels, *shape), dtype=np.float32)
    for c in range(channels):
        for r in range(0, shape[0], step):
            np.matmul(left[r:r + step], right[c], out=out[c, r:r + step])
    return out


def _make_grid(rng: np.random.Generator, shape: tuple[int, int], spacing: float, rotation_deg: float,
               shift_mm: tuple[float, float], elastic_mm: float) -> tuple[_Grid, np.ndarray]:
    """The case's deformed millimetre grid, plus one spare low-frequency field for anatomy variation."""
    h, w = shape
    rows = (np.arange(h, dtype=np.float32) - (h - 1) / 2) * spacing
    cols = (np.arange(w, dtype=np.float32) - (w - 1) / 2) * spacing
    low = _smooth_fields(rng, shape, cells=4, channels=3)
    disp = low[:2] * np.float32(elastic_mm)
    shift = (float(rng.uniform(-shift_mm[0], shift_mm[0])), float(rng.uniform(-shift_mm[1], shift_mm[1])))
    slack = float(np.abs(disp).max()) * 1.5
    gx, gy = disp[0], disp[1]
    gx += (cols - shift[0])[None, :]
    gy += (rows - shift[1])[:, None]
    theta = math.radians(rng.uniform(-rotation_deg, rotation_deg))
    c, s = math.cos(theta), math.sin(theta)
    x, y = gx * c, gy * c
    x += gy * s
    y -= gx * s
    return _Grid(x, y, np.broadcast_to(rows[:, None], shape), spacing, shift, (c, s), slack), low[2]


def _paint(hu: np.ndarray, labels: np.ndarray, window: _Window, region: np.ndarray, value,
           label: int | None) -> None:
    """Set ``value`` (scalar or full-size array) and optionally ``label`` on ``region`` within ``window``."""
    target = hu[window]
    target[region] = value[window][region] if isinstance(value, np.ndarray) else value
    if label is not None:
        labels[window][region] = label


_FULL: _Window = (slice(None), slice(None))


# ------------------------------------------------------------------------------------------------ CT


def _ct_anatomy(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Axial abdominal slice in HU (float32, before noise) and its organ labels."""
    h, w = PHANTOM_SIZES["ct"]
    spacing = round(float(rng.uniform(*CT_SPACING_RANGE_MM)), 4)
    half_fov = 0.5 * w * spacing
    a = half_fov * rng.uniform(0.78, 0.9)  # scanners choose the field of view to fit the patient
    b_ant = a * rng.uniform(0.64, 0.78)
    b_post = b_ant * rng.uniform(0.85, 1.0)  # the back flattens on the table
    k = float(np.clip(a / 160.0, 0.8, 1.15))  # organ size follows body size, but less than linearly
    g, low = _make_grid(rng, (h, w), spacing, 6.0, (0.04 * half_fov, 0.04 * half_fov), rng.uniform(2.5, 5.0))
    x, y = g.x, g.y
    tex = _smooth_fields(rng, (h, w), cells=20, channels=3)
    z = rng.uniform(0.0, 1.0)  # slice level: 0 = liver dome, 1 = lower renal poles

    by = np.where(y > 0, np.float32(b_post), np.float32(b_ant))
    rho = np.sqrt((x / a) ** 2 + (y / by) ** 2) + 1e-6
    depth = np.sqrt(x * x + y * y) * (1.0 / rho - 1.0)  # mm inside the skin along the ray from the centre
    fat_mm, muscle_mm = rng.uniform(8.0, 26.0), rng.uniform(6.0, 11.0)
    fat_local = fat_mm * (1.0 + 0.3 * low)
    cavity = depth >= fat_local + muscle_mm
    cav_a, cav_ant, cav_post = a - fat_mm - muscle_mm, b_ant - fat_mm - muscle_mm, b_post - fat_mm - muscle_mm

    hu = np.full((h, w), -1000.0, dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.uint8)
    _paint(hu, labels, _FULL, depth >= 0, -100.0 + 6.0 * tex[0], None)
    _paint(hu, labels, _FULL, depth >= fat_local, 45.0 + 4.0 * tex[1], None)
    bowel = tex[1] > rng.uniform(-0.5, 0.2)
    gut = np.where(bowel, 12.0 + 12.0 * tex[2], -95.0 + 5.0 * tex[2])  # fluid-filled loops in mesenteric fat
    gut[bowel & (tex[2] > 1.8)] = -900.0
    _paint(hu, labels, _FULL, cavity, gut, None)

    # The spine comes first: everything retroperitoneal is placed relative to it.
    rv = rng.uniform(16.0, 21.0) * k
    canal_r = 0.42 * rv
    yv = b_post - 0.5 * fat_mm - rng.uniform(8.0, 14.0) - (0.9 * rv + 2 * canal_r + 28.0)
    yc = yv + 0.9 * rv + canal_r + 1.0
    for side in (-1, 1):
        win, e = g.ellipse(side * (canal_r + 22.0) * k, yc + 6.0, 22.0 * k, 15.0 * k)
        _paint(hu, labels, win, e <= 1, 50.0 + 4.0 * tex[0], None)

    if z < 0.55:
        grow = 0.5 + 0.5 * (1.0 - z / 0.55)
        win, e = g.ellipse(cav_a * rng.uniform(0.15, 0.35), -cav_ant * rng.uniform(0.25, 0.45),
                           rng.uniform(30.0, 45.0) * k * grow, rng.uniform(22.0, 32.0) * k * grow,
                           math.radians(rng.uniform(-30, 10)))
        stomach = (e <= 1) & cavity[win]
        if stomach.any():  # supine: gas rises to the anterior wall with a horizontal air-fluid level
            rows = g.row_mm[win][stomach]
            level = rows.min() + (rows.max() - rows.min()) * rng.uniform(0.15, 0.6)
            _paint(hu, labels, win, stomach, np.where(g.row_mm < level, -950.0, 15.0 + 5.0 * tex[2]), None)
            _paint(hu, labels, win, stomach & (e > 0.8), 40.0, None)

    aorta_r = rng.uniform(10.0, 12.5)
    aorta_y = yv - 0.9 * rv - aorta_r - rng.uniform(1.5, 4.0)
    aorta_x = rng.uniform(0.25, 0.6) * rv

    s_liver = float(np.clip((0.92 - z) / 0.45, 0.0, 1.0)) ** 0.6
    if s_liver >= 0.35:
        lx, ly = cav_a * (0.3 + 0.32 * s_liver), cav_ant * (0.45 + 0.6 * s_liver)
        cx = -cav_a + 0.85 * lx
        cy = cav_ant * (rng.uniform(-0.1, 0.1) - 0.3 * (1.0 - s_liver))
        win = g.box(-cav_a - 5.0, 0.45 * cav_a, -cav_ant - 5.0, cav_post + 5.0)
        _, e = g.ellipse(cx, cy, lx, ly, math.radians(rng.uniform(-12, 12)), window=win)
        liver = e <= 1
        s_left = float(np.clip((0.5 - z) / 0.3, 0.0, 1.0)) ** 0.5
        if s_left > 0.3:  # the left lobe crosses the midline anteriorly in upper slices
            _, e = g.ellipse(cav_a * rng.uniform(-0.1, 0.05), -cav_ant * rng.uniform(0.45, 0.6),
                             cav_a * 0.4 * s_left, cav_ant * 0.26 * s_left, math.radians(rng.uniform(-25, -5)),
                             window=win)
            liver |= e <= 1
        # The liver stops at the IVC and the right crus; it never wraps around the spine.
        _, spine_zone = g.ellipse(0.0, yv + 10.0, 1.1 * rv + 22.0, rv + 2.0 * aorta_r + 14.0, window=win)
        liver &= (spine_zone > 1) & cavity[win]
        _paint(hu, labels, win, liver, rng.uniform(55.0, 68.0) + 5.0 * tex[0], 1)

    s_spleen = 1.0 if z < 0.35 else float(np.clip((0.68 - z) / 0.33, 0.0, 1.0))
    if s_spleen >= 0.35:
        long_ax = rng.uniform(45.0, 62.0) * k * math.sqrt(s_spleen)
        short_ax = rng.uniform(20.0, 27.0) * k * math.sqrt(s_spleen)
        phi = math.radians(rng.uniform(10.0, 45.0))
        cx, cy = math.cos(phi) * (cav_a - 0.9 * short_ax), math.sin(phi) * (cav_post - 0.9 * short_ax)
        tangent = math.atan2(cav_post * math.cos(phi), -cav_a * math.sin(phi))
        nx, ny = -math.cos(phi) / cav_a, -math.sin(phi) / cav_post
        norm = math.hypot(nx, ny)
        win, e = g.ellipse(cx, cy, long_ax, short_ax, tangent)
        _, notch = g.ellipse(cx + 2.2 * short_ax * nx / norm, cy + 2.2 * short_ax * ny / norm,
                             long_ax, 1.4 * short_ax, tangent, window=win)  # gastric impression
        _paint(hu, labels, win, (e <= 1) & (notch > 1) & cavity[win], rng.uniform(45.0, 55.0) + 4.0 * tex[1], 2)

    s_psoas = float(np.clip((z - 0.35) / 0.45, 0.0, 1.0))
    if s_psoas > 0.1:
        for side in (-1, 1):
            win, e = g.ellipse(side * (1.1 * rv + 6.0 + 6.0 * s_psoas), yv + 0.1 * rv,
                               (6.0 + 9.0 * s_psoas) * k, (9.0 + 8.0 * s_psoas) * k)
            _paint(hu, labels, win, e <= 1, 48.0, 0)

    win, e = g.ellipse(aorta_x - rng.uniform(26.0, 34.0), aorta_y + rng.uniform(-4.0, 4.0),
                       rng.uniform(9.0, 13.0), rng.uniform(7.0, 10.0))
    _paint(hu, labels, win, e <= 1, rng.uniform(70.0, 110.0), 0)  # IVC

    for side, label, z_centre in ((-1, 3, 0.66), (1, 4, 0.58)):  # the right kidney sits lower
        s_k = math.sqrt(max(0.0, 1.0 - ((z - z_centre) / 0.32) ** 2))
        if s_k < 0.45:
            continue
        length, width = rng.uniform(27.0, 34.0) * k * s_k, rng.uniform(19.0, 24.0) * k * s_k
        cx, cy = side * (1.1 * rv + rng.uniform(18.0, 28.0) + 0.7 * length), yv + rng.uniform(-8.0, 6.0)
        theta = -side * math.radians(rng.uniform(25.0, 45.0))  # long axis posteromedial → anterolateral
        px, py = -math.sin(theta), math.cos(theta)  # points posterolaterally; the hilum faces the other way
        win, e = g.ellipse(cx, cy, length + 7.0, width + 7.0, theta)
        _paint(hu, labels, win, e <= 1, -90.0 + 5.0 * tex[0], 0)  # perirenal fat
        _, e = g.ellipse(cx, cy, length, width, theta, window=win)
        _, sinus = g.ellipse(cx - 0.95 * width * px, cy - 0.95 * width * py, 0.3 * length, 0.4 * width, theta,
                             window=win)
        _, inner = g.ellipse(cx - 0.15 * width * px, cy - 0.15 * width * py, 0.62 * length, 0.55 * width, theta,
                             window=win)
        kidney = (e <= 1) & (sinus > 1)
        cortex = rng.uniform(140.0, 180.0)
        _paint(hu, labels, win, (e <= 1) & (sinus <= 1), -70.0, None)  # hilar fat
        _paint(hu, labels, win, kidney, cortex, label)
        _paint(hu, labels, win, kidney & (inner <= 1), cortex - rng.uniform(30.0, 60.0), None)

    win, e = g.ellipse(aorta_x, aorta_y, aorta_r, aorta_r)
    _paint(hu, labels, win, e <= 1, rng.uniform(180.0, 260.0), 5)

    win = g.box(-1.2 * rv - 8.0, 1.2 * rv + 8.0, yv - rv - 2.0, yc + canal_r + 30.0)
    _, body = g.ellipse(0.0, yv, 1.1 * rv, 0.9 * rv, window=win)
    _, canal = g.ellipse(0.0, yc, canal_r, 0.9 * canal_r, window=win)
    _, arch = g.ellipse(0.0, yc, canal_r + 6.0, 0.9 * canal_r + 6.0, window=win)
    _, spinous = g.ellipse(0.0, yc + canal_r + 14.0, 4.5, 13.0, window=win)
    _paint(hu, labels, win, ((body <= 1) | (arch <= 1) | (spinous <= 1)) & (canal > 1),
           rng.uniform(1000.0, 1250.0), 6)  # cortical bone
    _paint(hu, labels, win, body <= (1.0 - 3.0 / rv) ** 2, rng.uniform(520.0, 720.0) + 25.0 * tex[2], None)
    _paint(hu, labels, win, canal <= 1, 15.0, 0)

    return ndimage.gaussian_filter(hu, 0.6, truncate=2.5), labels, spacing


# ----------------------------------------------------------------------------------------------- CXR


def _cxr_anatomy(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """PA chest radiograph as density in [0, 1] (float32, before noise) and its organ labels."""
    h = PHANTOM_SIZES["cxr"][0]
    w = int(rng.integers(CXR_WIDTH_RANGE[0], CXR_WIDTH_RANGE[1] + 1))
    spacing = round(float(rng.uniform(*CXR_SPACING_RANGE_MM)), 4)
    half_w, h_mm = 0.5 * w * spacing, h * spacing
    g, low = _make_grid(rng, (h, w), spacing, 3.0, (0.03 * half_w, 0.03 * h_mm), rng.uniform(2.0, 4.0))
    x, y = g.x, g.y
    tex = _smooth_fields(rng, (h, w), cells=18, channels=3)

    half_thorax = min(rng.uniform(120.0, 160.0), half_w - rng.uniform(28.0, 45.0))
    wall_mm = rng.uniform(15.0, 30.0)
    lung_h = half_thorax * rng.uniform(1.45, 1.7)
    y_apex = -0.5 * h_mm + h_mm * rng.uniform(0.10, 0.16)
    dome_r = y_apex + lung_h
    dome_l = dome_r + rng.uniform(5.0, 22.0)  # the right hemidiaphragm sits higher
    u_peak = half_thorax * rng.uniform(0.45, 0.55)
    drop = rng.uniform(25.0, 45.0)  # costophrenic angle below the dome
    curve = drop / (half_thorax - u_peak) ** 2
    plateau = dome_l + rng.uniform(8.0, 18.0)  # the heart rests on the flat central tendon
    steep = rng.uniform(5.0, 15.0) / (half_thorax - u_peak) ** 4  # sharp costophrenic angles
    band_mm = rng.uniform(0.045, 0.055) * h_mm
    # The dome is only evaluated on the rows it can reach; above them nothing is below the diaphragm
    # (+inf), beneath them everything is (-inf). Beyond the lungs' reach it stays flat.
    reach = half_thorax + 8.0
    lowest = max(dome_r, dome_l) + curve * (reach - u_peak) ** 2 + steep * (reach - u_peak) ** 4
    rows = g.box(-half_w - 60.0, half_w + 60.0, dome_r - 2.0, lowest + band_mm + 2.0)[0]
    dome = np.empty((h, w), dtype=np.float32)
    dome[:rows.start], dome[rows.stop:] = np.inf, -np.inf
    xr = np.clip(x[rows], -reach, reach)
    dx_r, dx_l = (xr + u_peak) ** 2, (xr - u_peak) ** 2
    dome_rows = np.minimum(dome_r + curve * dx_r + steep * np.where(xr < -u_peak, dx_r * dx_r, 0.0),
                           dome_l + curve * dx_l + steep * np.where(xr > u_peak, dx_l * dx_l, 0.0))
    dome[rows] = np.where(np.abs(xr) < u_peak, np.minimum(dome_rows, plateau), dome_rows)
    med_up, med_low = rng.uniform(17.0, 24.0), rng.uniform(26.0, 34.0)
    knob, y_knob = rng.uniform(6.0, 14.0), y_apex + 0.22 * lung_h  # aortic knob bulges the left border

    def medial_border(win: _Window, side: int) -> np.ndarray:
        t = np.clip((y[win] - y_apex) / lung_h, 0.0, 1.0)
        border = med_up + (med_low - med_up) * t
        if side > 0:
            border = border + knob / (1.0 + ((y[win] - y_knob) / 14.0) ** 2) ** 2
        return border

    body_half = half_thorax + wall_mm
    shoulders = 35.0 * np.clip((y_apex + 30.0 - y) / 30.0, 0.0, 1.0)
    body = np.abs(x) <= body_half + shoulders
    density = np.where(body, 0.48 + 0.03 * tex[0], np.float32(0.03)).astype(np.float32)
    labels = np.zeros((h, w), dtype=np.uint8)
    below = body & (y >= dome)
    density[below] = (0.70 + 0.02 * tex[1])[below]
    win, e = g.ellipse(u_peak * rng.uniform(0.8, 1.1), dome_l + band_mm + rng.uniform(30.0, 45.0),
                       rng.uniform(22.0, 35.0), rng.uniform(12.0, 20.0))
    density[win][(e <= 1) & below[win]] = 0.45  # gastric bubble under the left hemidiaphragm

    lateral_base = {}
    base = rng.uniform(0.13, 0.2)
    for side, label in ((-1, 7), (1, 8)):
        apex = y_apex + rng.uniform(-5.0, 5.0)
        centre_u = 0.5 * (med_up + half_thorax) + rng.uniform(-5.0, 5.0)
        half_u = 0.5 * (half_thorax - med_up) + 2.0
        half_v = lung_h * rng.uniform(0.5, 0.6)
        y_mid = apex + half_v
        lateral_base[side] = centre_u + half_u
        win = g.box(-lateral_base[side] - 5.0 if side < 0 else 0.0, 0.0 if side < 0 else lateral_base[side] + 5.0,
                    apex - 5.0, lowest + 5.0)
        u, yy = side * x[win], y[win]
        outline = ((u - centre_u) / half_u) ** 2 + (np.minimum(yy - y_mid, 0.0) / half_v) ** 2
        lung = (outline <= 1) & (u > medial_border(win, side)) & (yy < dome[win])
        labels[win][lung] = label
        hilum_d2 = (u - med_low - 12.0) ** 2 + (yy - y_apex - 0.46 * lung_h) ** 2
        vessels = (0.09 * np.clip(tex[2][win], 0.0, None) / (1.0 + hilum_d2 / 70.0**2)
                   + 0.16 / (1.0 + hilum_d2 / 18.0**2) ** 2)
        lung_density = base + 0.06 * np.clip((yy - y_apex) / lung_h, 0.0, 1.0) + 0.015 * tex[0][win] + vessels
        density[win][lung] = lung_density[lung]

    win = g.box(-med_low - knob - 5.0, med_low + knob + 5.0, y_apex - 20.0, plateau + 5.0)
    y_top = y_apex - rng.uniform(5.0, 15.0)
    mediastinum = ((x[win] >= -medial_border(win, -1)) & (x[win] <= medial_border(win, 1))
                   & (y[win] >= y_top) & (y[win] < dome[win]))
    labels[win][mediastinum] = 10
    density[win][mediastinum] = (0.72 + 0.02 * tex[1][win])[mediastinum]

    heart_w = rng.uniform(0.40, 0.54) * 2.0 * half_thorax  # cardiothoracic ratio
    ha = 0.5 * heart_w
    hb = ha * rng.uniform(0.62, 0.78)
    win, e = g.ellipse(heart_w * rng.uniform(0.14, 0.22), plateau - hb * rng.uniform(0.6, 0.8), ha, hb,
                       math.radians(rng.uniform(20.0, 35.0)))
    heart = (e <= 1) & (labels[win] != 0) & (y[win] < dome[win])  # only lungs and mediastinum so far
    labels[win][heart] = 9
    density[win][heart] = (0.79 + 0.015 * tex[2][win])[heart]  # a faint edge against the mediastinum

    yr = y[rows]
    band = (yr >= dome[rows]) & (yr < dome[rows] + band_mm) & (x[rows] >= -lateral_base[-1]) & (
        x[rows] <= lateral_base[1])
    labels[rows][band] = 11
    density[rows][band] = 0.80

    # Overlying bone adds to the attenuation of whatever lies beneath it.
    win = g.box(-body_half, body_half, y_apex - 20.0, lowest + 15.0)
    u_abs, yy = np.abs(x[win]), y[win]
    thorax = body[win] & (u_abs <= body_half) & (yy < dome[win] + 10.0)
    phase = (yy - 0.25 * u_abs - 40.0 * (u_abs / half_thorax) ** 2) / rng.uniform(21.0, 26.0)
    ribs = np.clip(1.0 - np.abs(phase - np.floor(phase) - 0.17) / 0.17, 0.0, 1.0)  # posterior ribs
    density[win] += thorax * rng.uniform(0.05, 0.08) * ribs
    clavicle = np.abs(yy - (y_apex + rng.uniform(18.0, 32.0) - 0.25 * u_abs + 0.0009 * u_abs**2)) < 5.5
    density[win] += 0.09 * (clavicle & thorax & (u_abs > 12.0))
    spine = g.box(-25.0, 25.0, -h_mm, h_mm)
    density[spine] += 0.07 * (body[spine] & (np.abs(x[spine]) < 20.0))
    trachea = g.box(-12.0, 12.0, -h_mm, y_apex + 0.3 * lung_h)
    density[trachea] -= 0.14 * (body[trachea] & (np.abs(x[trachea] - 0.1 * med_up) < 8.0)
                                & (y[trachea] < y_apex + 0.3 * lung_h))

    return ndimage.gaussian_filter(density, 1.0, truncate=2.5), labels, spacing


# -------------------------------------------------------------------------------------------- lesions


@dataclasses.dataclass(frozen=True)
class _LesionShape:
    diameter_mm: tuple[float, float]
    aspect: tuple[float, float]  # minor / major axis
    irregularity: float  # amplitude of the radial harmonics
    edge_px: float  # half-width of the soft edge
    placement: str  # "interior" | "central" | "wall"


_SHAPES = {
    "hypodense cyst": _LesionShape((5.0, 45.0), (0.8, 1.0), 0.03, 0.8, "interior"),
    "enhancing mass": _LesionShape((10.0, 60.0), (0.65, 1.0), 0.12, 1.2, "interior"),
    "calcification": _LesionShape((3.0, 8.0), (0.6, 1.0), 0.1, 0.6, "interior"),
    "kidney stone": _LesionShape((3.0, 12.0), (0.6, 1.0), 0.12, 0.6, "central"),
    "nodule": _LesionShape((5.0, 28.0), (0.8, 1.0), 0.06, 1.2, "interior"),
    "mass": _LesionShape((30.0, 70.0), (0.7, 1.0), 0.12, 2.0, "interior"),
    "consolidation": _LesionShape((25.0, 80.0), (0.5, 0.9), 0.35, 3.5, "interior"),
}
_MIN_LESION_PX = 4
_Drawer = Callable[[np.random.Generator, str, np.ndarray, np.ndarray], None]


def _add_lesions(rng: np.random.Generator, modality: str, image: np.ndarray, labels: np.ndarray,
                 spacing: float, draw: _Drawer) -> list[PhantomLesion]:
    """Place 0–3 lesions in plausible host organs and draw them into ``image`` in place."""
    if rng.random() < NO_LESION_SHARE:
        return []
    wanted = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    types = findings_for(modality)
    free = np.ones(labels.shape, dtype=bool)
    areas = np.bincount(labels.ravel(), minlength=max(o.label for o in ORGAN_BY_NAME.values()) + 1)
    lesions: list[PhantomLesion] = []
    for _ in range(4 * wanted):
        if len(lesions) == wanted:
            break
        finding = types[int(rng.integers(len(types)))]
        hosts = [name for name in finding.hosts if areas[ORGAN_BY_NAME[name].label] >= 30]
        if not hosts:
            continue
        host_name = hosts[int(rng.integers(len(hosts)))]
        host = labels == ORGAN_BY_NAME[host_name].label
        if finding.name == "pleural effusion":
            if any(l.label == finding.name and l.host_organ == host_name for l in lesions):
                continue  # one effusion per pleural space
            floor = labels == ORGAN_BY_NAME["diaphragm"].label
            placed = _effusion_alpha(rng, host & free, floor, ORGAN_BY_NAME[host_name].side, spacing)
        else:
            shape = _SHAPES[finding.name]
            if finding.name == "calcification" and host_name == "aorta":
                shape = dataclasses.replace(shape, placement="wall")  # plaque sits in the vessel wall
            placed = _blob_alpha(rng, shape, host & free, spacing)
        if placed is None:
            continue
        window, alpha, mask = placed
        draw(rng, finding.name, image[window], alpha)
        free[window] &= ~ndimage.binary_dilation(mask, iterations=2)
        lesions.append(_lesion_record(finding.name, host_name, window, mask, labels.shape, spacing))
    return lesions


def _blob_alpha(rng: np.random.Generator, shape: _LesionShape, host: np.ndarray, spacing: float):
    """A soft round/lobulated lesion inside ``host``: (window, alpha, mask) or None if it does not fit."""
    bounds = _bounds(host)
    if bounds is None:
        return None
    r0, r1, c0, c1 = bounds
    # Distances on every other pixel of large hosts: seven times cheaper, and a lesion that overlaps its
    # host's edge by a pixel is clipped to the host below anyway.
    stride = 2 if max(r1 - r0, c1 - c0) > 64 else 1
    edt = ndimage.distance_transform_edt(np.pad(host[r0:r1:stride, c0:c1:stride], 1))[1:-1, 1:-1]
    edt = edt * stride - (stride - 1)
    max_r = float(edt.max())
    lo, hi = shape.diameter_mm
    radius = math.exp(rng.uniform(math.log(lo), math.log(hi))) / (2.0 * spacing)
    radius = min(radius, 0.95 * max_r)
    if 2.0 * radius * spacing < 0.9 * lo and not (shape.placement == "wall" and radius >= 1.0):
        return None
    if shape.placement == "central":
        ok = edt >= max(radius, 0.6 * max_r)
    elif shape.placement == "wall":
        ok = (edt >= 1.0) & (edt <= radius + 1.5)
    else:
        ok = edt >= 0.9 * radius
    cand_r, cand_c = np.nonzero(ok)
    if cand_r.size == 0:
        return None
    pick = int(rng.integers(cand_r.size))
    cy = r0 + stride * cand_r[pick] + rng.uniform(-0.5, 0.5)
    cx = c0 + stride * cand_c[pick] + rng.uniform(-0.5, 0.5)

    reach = int(math.ceil(radius + 2.0 * shape.edge_px + 2.0))
    h, w = host.shape
    window = (slice(max(0, int(cy) - reach), min(h, int(cy) + reach + 1)),
              slice(max(0, int(cx) - reach), min(w, int(cx) + reach + 1)))
    wy, wx = np.meshgrid(np.arange(window[0].start, window[0].stop, dtype=np.float32) - cy,
                         np.arange(window[1].start, window[1].stop, dtype=np.float32) - cx, indexing="ij")
    angle = rng.uniform(0.0, math.pi)
    u = wx * math.cos(angle) + wy * math.sin(angle)
    v = (wy * math.cos(angle) - wx * math.sin(angle)) / rng.uniform(*shape.aspect)
    theta = np.arctan2(v, u)
    weights = rng.dirichlet(np.ones(4))
    harmonics = sum(wk * np.cos(k * theta + rng.uniform(0, 2 * math.pi)) for k, wk in zip(range(2, 6), weights))
    outline = radius * (1.0 + shape.irregularity * harmonics) / (1.0 + shape.irregularity)
    alpha = np.clip(0.5 + (outline - np.hypot(u, v)) / (2.0 * shape.edge_px), 0.0, 1.0) * host[window]
    return _finish(window, alpha)


def _effusion_alpha(rng: np.random.Generator, host: np.ndarray, floor: np.ndarray, side: str | None,
                    spacing: float):
    """A dependent meniscus-shaped opacity filling the lung base above ``floor``, higher laterally."""
    bounds = _bounds(host)
    if bounds is None:
        return None
    r0, r1, c0, c1 = bounds
    window = (slice(r0, r1), slice(c0, c1))
    lung = host[window]
    present = lung.any(axis=0)
    bottom = np.where(present, lung.shape[0] - 1 - np.argmax(lung[::-1], axis=0), 0).astype(np.float32)
    lateral = np.linspace(0.0, 1.0, lung.shape[1], dtype=np.float32)
    if side == "right":  # patient right is image left, so the lateral wall is at the low columns
        lateral = lateral[::-1]
    height = rng.uniform(15.0, 60.0) / spacing
    level = bottom - height * (0.45 + 0.55 * lateral**1.5)
    # Only columns whose lowest lung pixel rests on the diaphragm: not the lung above the heart.
    below = np.minimum(r0 + bottom.astype(np.intp) + 1, host.shape[0] - 1)
    on_floor = present & floor[below, np.arange(c0, c1)]
    level = np.where(on_floor, level, np.float32(np.inf))
    row_idx = np.arange(lung.shape[0], dtype=np.float32)[:, None]
    alpha = np.clip(0.5 + (row_idx - level[None, :]) / 3.0, 0.0, 1.0) * lung
    return _finish(window, alpha)


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) of a mask's bounding box, ends exclusive; None if it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _finish(window: tuple[slice, slice], alpha: np.ndarray):
    """Keep one solid component so mask, box and polygon agree; None if too small to see."""
    mask = alpha >= 0.5
    parts, count = ndimage.label(mask)
    if count > 1:
        mask = parts == 1 + int(np.argmax(ndimage.sum_labels(mask, parts, index=np.arange(1, count + 1))))
    mask = ndimage.binary_fill_holes(mask)
    if np.count_nonzero(mask) < _MIN_LESION_PX:
        return None
    alpha = np.where(mask, np.maximum(alpha, 0.5), np.minimum(alpha, 0.45)).astype(np.float32)
    return window, alpha, mask


def _draw_ct_lesion(rng: np.random.Generator, name: str, pixels: np.ndarray, alpha: np.ndarray) -> None:
    if name == "enhancing mass":
        texture = 1.0 + 0.15 * rng.standard_normal(alpha.shape).astype(np.float32)
        pixels += alpha * rng.uniform(35.0, 80.0) * texture
        return
    target = {"hypodense cyst": (0.0, 20.0), "calcification": (400.0, 900.0), "kidney stone": (600.0, 1300.0)}
    pixels += alpha * (rng.uniform(*target[name]) - pixels)


def _draw_cxr_lesion(rng: np.random.Generator, name: str, pixels: np.ndarray, alpha: np.ndarray) -> None:
    gain = {"nodule": (0.2, 0.32), "mass": (0.25, 0.4), "consolidation": (0.16, 0.28),
            "pleural effusion": (0.35, 0.5)}[name]
    # Scaled by the remaining headroom so an opacity over the dense mediastinum does not saturate.
    opacity = alpha * rng.uniform(*gain) * np.clip(1.25 * (1.0 - pixels), 0.0, 1.0)
    if name == "consolidation":  # patchy airspace filling rather than a uniform blob
        opacity *= 0.75 + 0.25 * np.clip(_smooth_fields(rng, alpha.shape, 6, 1)[0], -1.0, 1.0)
    pixels += opacity


def _lesion_record(name: str, host: str, window: _Window, mask: np.ndarray, shape: tuple[int, int],
                   spacing: float) -> PhantomLesion:
    rows, cols = np.nonzero(mask)
    rows, cols = rows + window[0].start, cols + window[1].start
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    angles = np.linspace(0.0, math.pi, 24, endpoint=False)
    proj = cols[:, None] * np.cos(angles) + rows[:, None] * np.sin(angles)
    feret_px = float((proj.max(axis=0) - proj.min(axis=0)).max()) + 1.0  # pixel centres → outer edges
    full = np.zeros(shape, dtype=bool)
    full[window] = mask
    return PhantomLesion(name, host, full, box, round(feret_px * spacing, 1))


# -------------------------------------------------------------------------------------------- dataset


def lesion_polygon(mask: np.ndarray) -> list[float]:
    """Outer contour of a lesion mask as a flat COCO polygon ``[x0, y0, x1, y1, ...]`` on pixel edges."""
    r0, r1, c0, c1 = _bounds(mask)
    window = np.pad(mask[r0:r1, c0:c1], 1).astype(np.float64)
    lines = contourpy.contour_generator(z=window, line_type=contourpy.LineType.Separate).lines(0.5)
    outer = max(lines, key=len)
    if len(outer) > 1 and np.allclose(outer[0], outer[-1]):
        outer = outer[:-1]
    # Contour points sit between pixel centres; +0.5 moves them onto the pixel edges COCO uses.
    xy = outer + np.array([c0 - 0.5, r0 - 0.5])
    return [round(float(v), 2) for v in xy.reshape(-1)]


_CATEGORY_ID = {f.name: i for i, f in enumerate(FINDING_TYPES, start=1)}


def _write_one(task: tuple[str, str, int, int]) -> dict:
    """Generate one case, write its image and mask PNGs, and return its COCO image and annotation fields."""
    out_dir, modality, seed, index = task
    case = generate_case(modality, seed, index)
    name = f"{modality}_{index:05d}.png"
    if modality == "ct":
        stored = np.clip(case.image.astype(np.int32) + CT_PNG_OFFSET, 0, 65535).astype(np.uint16)
    else:
        stored = case.image
    # Images are stored uncompressed: image noise leaves zlib little to gain (about 40%) at twice the
    # writing time; label masks are flat and shrink fifty-fold at its fastest level.
    Image.fromarray(stored).save(Path(out_dir) / "images" / name, compress_level=0)
    Image.fromarray(case.organ_mask).save(Path(out_dir) / "masks" / name, compress_level=1)
    h, w = case.image.shape
    return {
        "image": {"file_name": f"images/{name}", "width": w, "height": h, "modality": _DICOM_MODALITY[modality],
                  "pixel_spacing": list(case.pixel_spacing_mm), "view": case.view},
        "annotations": [{
            "category_id": _CATEGORY_ID[lesion.label],
            "bbox": [lesion.box_px[0], lesion.box_px[1], lesion.box_px[2] - lesion.box_px[0],
                     lesion.box_px[3] - lesion.box_px[1]],
            "area": int(np.count_nonzero(lesion.mask)),
            "segmentation": [lesion_polygon(lesion.mask)],
            "size_mm": lesion.size_mm,
            "iscrowd": 0,
            "host_organ": lesion.host_organ,
        } for lesion in case.lesions],
    }


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def _init_worker() -> None:
    """Keep freed buffers in the worker's heap instead of returning them to the OS.

    A case allocates a few hundred image-sized temporaries; with glibc's defaults each one is faulted in
    afresh, and in a VM that costs more than the arithmetic on it (about 30% of the run). glibc only.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 512 << 20)
    except (OSError, AttributeError):
        pass


def write_phantom_dataset(out_dir: Path, modalities: Sequence[str], count: int, seed: int,
                          workers: int = 2, progress: bool = True) -> Path:
    """Write ``count`` phantom cases per modality as a COCO-style detection dataset with organ masks.

    Layout: ``images/<modality>_<index>.png`` (CT as uint16 HU+1024, CXR as uint8), ``masks/`` with the
    same names (uint8 global labels), ``organs.json`` and ``annotations.json``. Returns the latter's path.
    Cases are generated by ``workers`` processes (in-process when ``workers <= 1``); the output does not
    depend on the number of workers.
    """
    for modality in modalities:
        organs_for(modality)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    tasks = [(str(out_dir), m, seed, i) for m in modalities for i in range(count)]

    records = []
    bar = tqdm(total=len(tasks), desc="phantoms", unit="img", disable=not progress)
    if workers <= 1 or len(tasks) < 2:
        for task in tasks:
            records.append(_write_one(task))
            bar.update()
    else:
        chunk = max(1, min(32, len(tasks) // (workers * 8)))
        with multiprocessing.get_context().Pool(workers, initializer=_init_worker) as pool:
            for record in pool.imap(_write_one, tasks, chunksize=chunk):
                records.append(record)
                bar.update()
    bar.close()

    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, **record["image"]})
        for ann in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    coco = {
        "info": {"description": "MedCLM synthetic phantoms", "generator": "training.data.phantoms",
                 "seed": seed, "count_per_modality": count, "modalities": list(modalities)},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": _CATEGORY_ID[f.name], "name": f.name, "supercategory": f.modality}
                       for f in FINDING_TYPES],
    }
    (out_dir / "organs.json").write_text(json.dumps(organ_names_json(), indent=2) + "\n")
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(coco) + "\n")
    return path
