"""CT-like abdominal phantoms in Hounsfield units with exact organ labels.

Why: tests, benchmarks and demos need realistic-looking CT with ground truth, without any patient data. Anatomy is
laid out in "adult millimetres" (x = patient left, y = posterior, z = superior, origin near L1), scaled to the field
of view, bent by one smooth random warp shared by all organs (so neighbours stay neighbours), and painted by priority
so that organs touch but never overlap. Intensities come from a tissue table, then texture, a scanner blur (partial
volume) and correlated noise are added. Everything is deterministic per seed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.sampledata.anatomy import (
    ADULT_HALF_WIDTH_MM,
    ADULT_Z_SPAN_MM,
    LABEL_IDS,
    TISSUE_INDEX,
    TISSUES,
    Canvas,
    draw_anatomy,
    smooth_field,
)


class PhantomError(ValueError):
    """Bad phantom parameters."""


@dataclasses.dataclass
class Phantom:
    image: Volume  # int16 HU
    labels: Volume  # uint8, same geometry
    label_ids: dict[str, int]
    label_names: dict[int, str]
    seed: int = 0
    contrast_phase: str = "venous"
    # (x, y, z) factors from the drawn adult anatomy to this phantom (a 205 mm field of view is child-sized):
    # divide a volume in ml by their product to get the adult-equivalent volume.
    anatomy_scale_xyz: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def mask(self, name: str) -> np.ndarray:
        """Boolean (z, y, x) mask of one structure."""
        if name not in self.label_ids:
            raise KeyError(f"no structure {name!r}; phantom has {sorted(self.label_ids)}")
        return self.labels.array == self.label_ids[name]

    def volume_ml(self, name: str) -> float:
        return float(self.mask(name).sum()) * float(np.prod(self.image.spacing_mm)) / 1000.0

    def box_kji(self, name: str) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """Inclusive (k, j, i) index ranges of a structure."""
        mask = self.mask(name)
        if not mask.any():
            raise ValueError(f"structure {name!r} is empty in this phantom")
        ranges = []
        for axis in range(3):
            present = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
            ranges.append((int(present[0]), int(present[-1])))
        return tuple(ranges)


# --- the phantom ----------------------------------------------------------------------------------------------------

def make_phantom(seed: int = 0, shape_kji: tuple[int, int, int] = (120, 256, 256), *,
                 spacing_mm: tuple[float, float, float] | None = None,
                 contrast_phase: str | None = None, noise_hu: float | None = None) -> Phantom:
    """Build one abdominal CT phantom.

    ``spacing_mm`` (x, y, z) defaults to a seed-dependent in-plane 0.7-0.9 mm and slice 1.5-3 mm (coarser for grids
    smaller than 256 x 256 x 120, so the field of view stays that of the default grid);
    ``contrast_phase`` is "native" or "venous" (default: drawn from the seed, mostly venous).
    """
    # size-waiver: the phantom's steps in order (field of view, warp, anatomy, labels, rendering), each a few lines
    shape_kji = tuple(int(n) for n in shape_kji)
    if len(shape_kji) != 3 or min(shape_kji) < 16:
        raise PhantomError(f"shape_kji must be 3 sizes of at least 16 voxels; got {shape_kji}")
    rng = np.random.default_rng(seed)
    in_plane = rng.uniform(0.7, 0.9)
    slice_mm = rng.uniform(1.5, 3.0)
    phase_draw = rng.uniform()
    if spacing_mm is None:  # small grids get proportionally coarser voxels so that a whole abdomen still fits
        in_plane *= max(1.0, 256 / min(shape_kji[1:]))
        slice_mm *= max(1.0, 120 / shape_kji[0])
        spacing_mm = (in_plane, in_plane, slice_mm)
    spacing_mm = tuple(float(s) for s in spacing_mm)
    if len(spacing_mm) != 3 or min(spacing_mm) <= 0:
        raise PhantomError(f"spacing_mm must be 3 positive values (x, y, z); got {spacing_mm}")
    if contrast_phase is None:
        contrast_phase = "native" if phase_draw < 0.25 else "venous"
    if contrast_phase not in ("native", "venous"):
        raise PhantomError(f"contrast_phase must be 'native' or 'venous'; got {contrast_phase!r}")
    nz, ny, nx = shape_kji
    sx, sy, sz = spacing_mm
    fov_x, fov_y, fov_z = nx * sx, ny * sy, nz * sz

    # Body size from the field of view; anatomy scale in-plane (s_xy) and along z (s_z, stretch capped).
    half_width = rng.uniform(0.40, 0.45) * fov_x
    aspect = rng.uniform(0.64, 0.76)
    half_width = min(half_width, 0.45 * fov_y / aspect)
    s_xy = half_width / ADULT_HALF_WIDTH_MM
    s_z = float(np.clip(0.95 * fov_z / ADULT_Z_SPAN_MM, 0.75 * s_xy, 1.4 * s_xy))
    body_b = ADULT_HALF_WIDTH_MM * aspect  # adult-mm half-depth
    centre_phys = np.array([rng.uniform(-0.03, 0.03) * fov_x, rng.uniform(-0.04, 0.0) * fov_y,
                            rng.uniform(-0.03, 0.03) * fov_z])
    z_mid_adult = 10.0  # adult z placed at the volume centre

    # Physical grid (centred), then anatomical coordinates = physical / scale + smooth warp.
    spacing_kji = (sz, sy, sx)
    px = ((np.arange(nx) - (nx - 1) / 2) * sx - centre_phys[0]) / s_xy
    py = ((np.arange(ny) - (ny - 1) / 2) * sy - centre_phys[1]) / s_xy
    pz = ((np.arange(nz) - (nz - 1) / 2) * sz - centre_phys[2]) / s_z + z_mid_adult
    warp_mm = rng.uniform(4.0, 8.0)
    fields = smooth_field(rng, shape_kji, spacing_kji, correlation_mm=70.0 * s_xy, count=4)
    x = px[None, None, :] + warp_mm * fields[0]
    y = py[None, :, None] + warp_mm * fields[1]
    z = pz[:, None, None] + 0.7 * warp_mm * fields[2]
    bump = fields[3]

    def to_index(adult_xyz: np.ndarray) -> np.ndarray:
        adult_xyz = np.atleast_2d(adult_xyz)
        phys = np.stack([adult_xyz[:, 0] * s_xy + centre_phys[0], adult_xyz[:, 1] * s_xy + centre_phys[1],
                         (adult_xyz[:, 2] - z_mid_adult) * s_z + centre_phys[2]], axis=1)
        sizes = np.array([nx, ny, nz])
        return phys / np.array([sx, sy, sz]) + (sizes - 1) / 2

    canvas = Canvas((x.astype(np.float32), y.astype(np.float32), z.astype(np.float32)), bump, to_index,
                     warp_margin_mm=3.5 * warp_mm)
    canvas.bowel_field = smooth_field(rng, shape_kji, spacing_kji, correlation_mm=18.0 * s_xy)[0]
    draw_anatomy(canvas, rng, body_b)

    tissue = canvas.tissue
    hu_table = np.array([t[2] if contrast_phase == "native" else t[3] for t in TISSUES], np.float32)
    label_table = np.array([0 if t[1] is None else LABEL_IDS[t[1]] for t in TISSUES], np.uint8)
    _drop_detached_fragments(tissue, label_table)
    labels = label_table[tissue]
    image = _render(rng, tissue, hu_table, spacing_kji, noise_hu)

    origin = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz)
    image_volume = Volume(image, spacing_mm, origin, name=f"phantom_{seed}")
    label_volume = image_volume.with_array(labels, name=f"phantom_{seed}_labels")
    return Phantom(image=image_volume, labels=label_volume, label_ids=dict(LABEL_IDS),
                   label_names={v: k for k, v in LABEL_IDS.items()}, seed=seed, contrast_phase=contrast_phase,
                   anatomy_scale_xyz=(s_xy, s_xy, s_z))


def _drop_detached_fragments(tissue: np.ndarray, label_table: np.ndarray) -> None:
    """Priority painting can cut a thin piece off an organ; such islands become visceral fat (organs stay whole)."""
    labels = label_table[tissue]
    boxes = ndimage.find_objects(labels)
    for structure in ("liver", "spleen", "kidney_right", "kidney_left", "stomach", "gallbladder", "pancreas", "aorta",
                      "adrenal_right", "adrenal_left"):
        value = LABEL_IDS[structure]
        box = boxes[value - 1] if value <= len(boxes) else None
        if box is None:
            continue
        parts, count = ndimage.label(labels[box] == value)
        if count > 1:
            keep = np.argmax(np.bincount(parts.ravel())[1:]) + 1
            tissue[box][(parts > 0) & (parts != keep)] = TISSUE_INDEX["visceral_fat"]


def _render(rng: np.random.Generator, tissue: np.ndarray, hu_table: np.ndarray, spacing_kji, noise_hu) -> np.ndarray:
    """Tissue map -> int16 HU: per-tissue jitter, texture, scanner blur (partial volume), correlated noise."""
    table = hu_table + rng.normal(0.0, 6.0, hu_table.shape).astype(np.float32)
    table[TISSUE_INDEX["air"]] = -1000.0
    hu = table[tissue]
    soft = (hu > -200) & (hu < 300)
    texture = ndimage.gaussian_filter(rng.standard_normal(tissue.shape).astype(np.float32), 1.5)
    hu += 25.0 * texture * soft  # blurred unit noise has std ~0.1 -> a few HU of mottling
    in_plane_sigma_px = 0.55 / (spacing_kji[2] / 0.8)
    hu = ndimage.gaussian_filter(hu, (0.45, in_plane_sigma_px, in_plane_sigma_px))
    sigma = rng.uniform(8.0, 18.0) if noise_hu is None else float(noise_hu)
    noise = ndimage.gaussian_filter(rng.standard_normal(tissue.shape).astype(np.float32), (0.0, 0.7, 0.7))
    noise *= sigma / (noise.std() + 1e-9)
    hu += noise
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)


def template_from_phantom(name: str, phantom: Phantom, structures: list[str] | None = None):
    """A labelled phantom as a localization template (labels kept, so sub-patches work): tests, demo, benchmarks."""
    from MedFoundationSegLib.localize.templates import Template

    ids = phantom.label_ids if structures is None else {s: phantom.label_ids[s] for s in structures}
    return Template.from_volumes(name, phantom.image, phantom.labels, ids)
