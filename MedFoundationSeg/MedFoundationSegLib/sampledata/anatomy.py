"""The phantoms' anatomy: the tissue table (label, HU range per tissue), the warped drawing canvas and the recipe that
paints every organ in priority order (later wins), in adult millimetres."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Structure labels (value -> name). Stable: other code and tests rely on these names.
LABEL_IDS: dict[str, int] = {
    "liver": 1,
    "spleen": 2,
    "kidney_right": 3,
    "kidney_left": 4,
    "stomach": 5,
    "aorta": 6,
    "spine": 7,
    "gallbladder": 8,
    "pancreas": 9,
    "adrenal_right": 10,
    "adrenal_left": 11,
}

# Tissue table: name -> (label name or None, HU native, HU portal-venous).
TISSUES: list[tuple[str, str | None, float, float]] = [
    ("air", None, -1000, -1000),
    ("fat", None, -100, -100),
    ("skin", None, 30, 30),
    ("muscle", None, 50, 55),
    ("visceral_fat", None, -95, -95),
    ("lung", None, -850, -850),
    ("heart", None, 40, 130),
    ("blood_ivc", None, 40, 140),
    ("bowel_wall", None, 35, 80),
    ("bowel_fluid", None, 10, 15),
    ("bowel_air", None, -950, -950),
    ("csf", None, 8, 8),
    ("disc", None, 80, 85),
    ("table", None, 250, 250),
    ("rib", None, 500, 500),
    ("liver", "liver", 60, 110),
    ("liver_vessel", "liver", 40, 170),
    ("spleen", "spleen", 50, 120),
    ("kidney_r_cortex", "kidney_right", 35, 190),
    ("kidney_r_medulla", "kidney_right", 30, 120),
    ("kidney_l_cortex", "kidney_left", 35, 190),
    ("kidney_l_medulla", "kidney_left", 30, 120),
    ("stomach_wall", "stomach", 40, 90),
    ("stomach_content", "stomach", 20, 20),
    ("stomach_air", "stomach", -950, -950),
    ("aorta", "aorta", 45, 170),
    ("bone_cortical", "spine", 800, 800),
    ("bone_cancellous", "spine", 230, 230),
    ("gallbladder", "gallbladder", 10, 12),
    ("pancreas", "pancreas", 45, 100),
    ("adrenal_right", "adrenal_right", 35, 70),
    ("adrenal_left", "adrenal_left", 35, 70),
]
TISSUE_INDEX = {name: index for index, (name, *_rest) in enumerate(TISSUES)}

ADULT_HALF_WIDTH_MM = 165.0  # body half-width the anatomy below is drawn for
ADULT_Z_SPAN_MM = 330.0
MIN_FOV_MM = 180.0  # superior-inferior extent of the drawn anatomy (lung bases to below the kidneys)


# --- geometry helpers (all in adult mm, on crops of the warped coordinate grid) --------------------------------------

def _rotation(rx_deg: float, ry_deg: float, rz_deg: float) -> np.ndarray:
    """Rotation that maps world offsets into the primitive's own frame."""
    ax, ay, az = np.radians([rx_deg, ry_deg, rz_deg])
    rot_x = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rot_y = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rot_z = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return (rot_z @ rot_y @ rot_x).T


class Canvas:
    """Warped anatomical coordinates plus the tissue map being painted."""

    def __init__(self, coords_xyz: tuple[np.ndarray, np.ndarray, np.ndarray], bump: np.ndarray,
                 to_index: callable, warp_margin_mm: float):
        self.x, self.y, self.z = coords_xyz
        self.bump = bump
        self.shape = self.x.shape
        self.tissue = np.full(self.shape, TISSUE_INDEX["air"], dtype=np.uint8)
        self._to_index = to_index
        self._margin = warp_margin_mm

    def crop(self, centre, radius) -> tuple[slice, slice, slice] | None:
        """Index slices (z, y, x) covering an adult-mm box around ``centre`` (+ warp margin), or None if outside."""
        lo = np.asarray(centre, float) - np.asarray(radius, float) - self._margin
        hi = np.asarray(centre, float) + np.asarray(radius, float) + self._margin
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        ijk = self._to_index(corners)
        lo_i = np.floor(ijk.min(axis=0)).astype(int)
        hi_i = np.ceil(ijk.max(axis=0)).astype(int) + 1
        size_ijk = self.shape[::-1]
        lo_i = np.clip(lo_i, 0, size_ijk)
        hi_i = np.clip(hi_i, 0, size_ijk)
        if np.any(hi_i <= lo_i):
            return None
        return (slice(lo_i[2], hi_i[2]), slice(lo_i[1], hi_i[1]), slice(lo_i[0], hi_i[0]))

    def coords(self, region):
        return self.x[region], self.y[region], self.z[region]

    def ellipsoid(self, region, centre, semi, angles=(0, 0, 0), bump=0.0) -> np.ndarray:
        """Normalised ellipsoid level on a crop: < 1 inside; ``bump`` adds smooth random surface relief."""
        x, y, z = self.coords(region)
        rot = _rotation(*angles)
        dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
        level = np.zeros(x.shape, np.float32)
        for row in range(3):
            u = rot[row, 0] * dx + rot[row, 1] * dy + rot[row, 2] * dz
            level += (u / semi[row]) ** 2
        if bump:
            level *= 1.0 + bump * self.bump[region]
        return level

    def tube(self, region, points, radii) -> np.ndarray:
        """Distance-to-polyline level on a crop: < 1 inside a tube whose radius is interpolated along the path."""
        x, y, z = self.coords(region)
        best = np.full(x.shape, np.inf, np.float32)
        for (p0, p1, r0, r1) in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
            p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
            seg = p1 - p0
            t = ((x - p0[0]) * seg[0] + (y - p0[1]) * seg[1] + (z - p0[2]) * seg[2]) / float(seg @ seg)
            t = np.clip(t, 0.0, 1.0)
            d2 = (x - p0[0] - t * seg[0]) ** 2 + (y - p0[1] - t * seg[1]) ** 2 + (z - p0[2] - t * seg[2]) ** 2
            radius = r0 + (r1 - r0) * t
            np.minimum(best, d2 / radius**2, out=best)
        return best

    def paint(self, region, inside: np.ndarray, tissue: str, only_where: tuple[str, ...] | None = None) -> None:
        view = self.tissue[region]
        if only_where is not None:
            inside = inside & np.isin(view, [TISSUE_INDEX[t] for t in only_where])
        view[inside] = TISSUE_INDEX[tissue]


def _linear_weights(n_fine: int, n_coarse: int) -> np.ndarray:
    """(n_fine, n_coarse) matrix that linearly interpolates a coarse 1D signal spanning the same extent."""
    positions = (np.arange(n_fine) + 0.5) * n_coarse / n_fine - 0.5
    return np.stack([np.interp(positions, np.arange(n_coarse), np.eye(n_coarse)[c]) for c in range(n_coarse)], 1)


def smooth_field(rng: np.random.Generator, shape_kji, spacing_kji_mm, correlation_mm: float,
                  count: int = 1) -> list[np.ndarray]:
    """Unit-variance smooth random fields: blurred coarse Gaussian noise, upsampled separably (fast matrix products)."""
    coarse_step = correlation_mm / 2.0
    coarse_shape = [max(4, int(np.ceil(n * s / coarse_step)) + 1) for n, s in zip(shape_kji, spacing_kji_mm)]
    weights = [_linear_weights(n, c).astype(np.float32) for n, c in zip(shape_kji, coarse_shape)]
    fields = []
    for _ in range(count):
        coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap").astype(np.float32)
        coarse /= coarse.std() + 1e-9
        cz, cy, cx = coarse.shape
        fine = (weights[0] @ coarse.reshape(cz, cy * cx)).reshape(-1, cy, cx)  # small intermediate products first,
        fine = np.matmul(weights[1], fine)  # then one 2D product writes the full-size field
        fields.append((fine.reshape(-1, cx) @ weights[2].T).reshape(shape_kji))
    return fields


def _jit(rng, scale: float, n: int = 3) -> np.ndarray:
    return rng.uniform(-scale, scale, n)


def draw_anatomy(cv: Canvas, rng: np.random.Generator, body_b: float) -> None:
    """Paint tissues in priority order (later wins); positions in adult mm (x left, y posterior, z superior)."""
    # size-waiver: one anatomical recipe read top to bottom; every organ is placed relative to the ones before it
    A, B = ADULT_HALF_WIDTH_MM, body_b
    everything = (slice(None), slice(None), slice(None))
    x, y, z = cv.x, cv.y, cv.z

    # Body: superellipse cross-section, flatter posteriorly; fat, muscle wall, visceral cavity.
    abs_x, abs_y, posterior = np.abs(x), np.abs(y), y > 0

    def body_level(shrink_mm: float) -> np.ndarray:
        u, v = abs_x / (A - shrink_mm), abs_y / (B - shrink_mm)
        return u * u + v * v * np.where(posterior, v, 1.0)

    fat_mm = rng.uniform(10.0, 32.0)
    wall_mm = rng.uniform(8.0, 13.0)
    cv.paint(everything, body_level(0.0) < 1.0, "skin")
    cv.paint(everything, body_level(2.5) < 1.0, "fat")
    cv.paint(everything, body_level(fat_mm) < 1.0, "muscle")
    cavity = body_level(fat_mm + wall_mm) < 1.0
    retroperitoneum = body_level(fat_mm + 3.0) < 1.0  # kidneys may press into the posterior wall muscles
    cv.paint(everything, cavity, "visceral_fat")
    table_y = B + 6.0
    cv.paint(everything, (y > table_y) & (y < table_y + 10.0) & (np.abs(x) < 0.95 * A), "table")

    # Diaphragm height: highest over the liver, lower posteriorly (costophrenic recesses).
    dome = 135.0 + rng.uniform(-8, 8) - 28.0 * np.clip(y / B, 0, None) ** 2 - 20.0 * (x / A) ** 2 \
        + 8.0 * np.clip(-x / A, 0, None)
    above = dome < z
    cv.paint(everything, cavity & above, "lung")
    heart_c = np.array([15.0, -35.0, 195.0]) + _jit(rng, 8)
    region = cv.crop(heart_c, (75, 65, 65))
    if region:
        cv.paint(region, cv.ellipsoid(region, heart_c, (70, 55, 60), (0, 0, -25), bump=0.1) < 1, "heart",
                 only_where=("lung", "visceral_fat"))
    below = ~above

    # Ribs: thin bony arcs in the muscle wall at regular pitch, sloping anteriorly-downwards, above the kidneys.
    pitch, phase = rng.uniform(24, 30), rng.uniform(0, 30)
    rib_z = z + 0.25 * y
    rib = (np.mod(rib_z + phase, pitch) < 7.0) & (z > -40) & (y > -0.55 * B)
    ring = (body_level(fat_mm + 1.5) < 1.0) & (body_level(fat_mm + wall_mm - 1.5) >= 1.0)
    cv.paint(everything, rib & ring, "rib")

    # Paraspinal muscles and psoas.
    for side in (-1, 1):
        c = np.array([side * 38.0, 0.62 * B + 8, 0.0])
        region = cv.crop(c, (40, 40, 400))
        lvl = cv.ellipsoid(region, c, (34, 28, 1e6), bump=0.15)
        cv.paint(region, lvl < 1, "muscle", only_where=("visceral_fat", "lung", "muscle", "fat"))
        top = np.array([side * 28.0, 45.0, -10.0])
        bottom = np.array([side * 55.0, 20.0, -200.0])
        region = cv.crop((top + bottom) / 2, (60, 50, 110))
        if region:
            lvl = cv.tube(region, [top, bottom], [4.0, 26.0])
            cv.paint(region, lvl < 1, "muscle", only_where=("visceral_fat",))

    # Bowel loops: below the liver, anterior; smooth blobs with walls, fluid and air.
    bowel_field = cv.bowel_field
    gut_zone = cavity & below & (z < 40 - 0.5 * (y + B)) & (y < 0.35 * B)
    loops = gut_zone & (bowel_field > 0.2)
    cv.paint(everything, loops, "bowel_wall", only_where=("visceral_fat",))
    cv.paint(everything, loops & (bowel_field > 0.6), "bowel_fluid", only_where=("bowel_wall",))
    cv.paint(everything, loops & (bowel_field > 1.5) & (y < -0.2 * B), "bowel_air", only_where=("bowel_fluid",))

    soft = ("visceral_fat", "bowel_wall", "bowel_fluid", "bowel_air", "muscle", "lung")

    # Liver: right lobe + left lobe, under the dome; intrahepatic vessels as curves where two fields cross zero.
    size = rng.uniform(0.8, 1.05)
    c_r = np.array([-68.0, 2.0, 62.0]) + _jit(rng, 8)
    c_l = np.array([22.0, -48.0, 88.0]) + _jit(rng, 8)
    region = cv.crop((c_r + c_l) / 2, (140, 110, 110))
    lvl_r = cv.ellipsoid(region, c_r, size * np.array([82, 95, 85]), (0, 8, 0) + _jit(rng, 6), bump=0.25)
    lvl_l = cv.ellipsoid(region, c_l, size * np.array([72, 42, 40]), (0, -10, 15) + _jit(rng, 6), bump=0.25)
    liver = ((lvl_r < 1) | (lvl_l < 1)) & cavity[region] & below[region]
    cv.paint(region, liver, "liver", only_where=soft)
    v1, v2 = [ndimage.gaussian_filter(rng.standard_normal(liver.shape).astype(np.float32), 4.0) for _ in range(2)]
    thresh = 0.12 * v1.std()
    vessels = (np.abs(v1) < thresh) & (np.abs(v2) < 0.12 * v2.std())
    vessels = ndimage.binary_dilation(vessels, iterations=1) & (lvl_r < 0.85) & liver
    cv.paint(region, vessels, "liver_vessel", only_where=("liver",))

    # Spleen: crescent (ellipsoid minus a medial ellipsoid) in the left upper quadrant.
    size = rng.uniform(0.7, 1.3)
    c = np.array([92.0, 0.38 * B, 70.0]) + _jit(rng, 7)
    region = cv.crop(c, (80, 80, 80))
    lvl = cv.ellipsoid(region, c, size * np.array([30, 58, 55]), (0, 0, -40) + _jit(rng, 8), bump=0.2)
    hollow = cv.ellipsoid(region, c + np.array([-45, -20, 0]), size * np.array([35, 50, 70]), (0, 0, -40))
    cv.paint(region, (lvl < 1) & (hollow >= 1) & cavity[region] & below[region], "spleen", only_where=soft)

    # Stomach: fundus/body + antrum sweeping to the right; wall, contents, air anteriorly (patient supine).
    size = rng.uniform(0.8, 1.2)
    c_f = np.array([45.0, -30.0, 85.0]) + _jit(rng, 8)
    c_a = np.array([10.0, -58.0, 35.0]) + _jit(rng, 8)
    region = cv.crop((c_f + c_a) / 2, (100, 80, 110))
    lvl_f = cv.ellipsoid(region, c_f, size * np.array([45, 36, 52]), (15, 0, -20) + _jit(rng, 8), bump=0.2)
    lvl_a = cv.ellipsoid(region, c_a, size * np.array([48, 22, 28]), (0, 0, 20) + _jit(rng, 8), bump=0.2)
    stomach = ((lvl_f < 1) | (lvl_a < 1)) & cavity[region] & below[region]
    lumen = (np.minimum(lvl_f, lvl_a) < 0.72) & stomach
    cv.paint(region, stomach, "stomach_wall", only_where=soft + ("liver",))
    cv.paint(region, lumen, "stomach_content", only_where=("stomach_wall",))
    air_level = c_f[1] - rng.uniform(0.0, 0.5) * 36 * size
    cv.paint(region, lumen & (cv.y[region] < air_level), "stomach_air", only_where=("stomach_content",))

    # Kidneys: tilted beans with a medial hilum notch; cortex rim around medulla.
    for side, name, z0 in ((-1, "r", -25.0), (1, "l", -5.0)):
        size = rng.uniform(0.85, 1.15)
        c = np.array([side * 68.0, 0.45 * B + 4.0, z0]) + _jit(rng, 7)
        angles = (0, side * -12, side * 25) + _jit(rng, 6)
        semi = size * np.array([28, 26, 55])
        region = cv.crop(c, (70, 70, 75))
        lvl = cv.ellipsoid(region, c, semi, angles, bump=0.12)
        notch = cv.ellipsoid(region, c + np.array([-side * 30.0, -12.0, 0]), size * np.array([16, 12, 22]))
        kidney = (lvl < 1) & (notch >= 1) & retroperitoneum[region]
        cv.paint(region, kidney, f"kidney_{name}_cortex", only_where=soft + ("liver", "spleen"))
        cv.paint(region, kidney & (lvl < 0.45), f"kidney_{name}_medulla", only_where=(f"kidney_{name}_cortex",))

    # Pancreas: a thin curved tube from the head (right of the midline) to the tail at the splenic hilum.
    size = rng.uniform(0.85, 1.15)
    pts = np.array([[-38.0, -12.0, 0.0], [-8.0, -28.0, 10.0], [35.0, -15.0, 18.0], [75.0, 0.35 * B, 32.0]])
    pts += rng.uniform(-6, 6, pts.shape)
    radii = size * np.array([15.0, 9.0, 9.0, 7.0])
    region = cv.crop(pts.mean(axis=0), (np.ptp(pts, axis=0) / 2 + 25))
    lvl = cv.tube(region, pts, radii) * (1.0 + 0.25 * cv.bump[region])
    cv.paint(region, (lvl < 1) & cavity[region], "pancreas", only_where=soft + ("liver", "stomach_wall"))

    # Gallbladder: pear-shaped, tucked into the inferior surface of the liver.
    size = rng.uniform(0.7, 1.2)
    c = np.array([-45.0, -52.0, 10.0]) + _jit(rng, 6)
    region = cv.crop(c, (45, 45, 55))
    lvl = cv.ellipsoid(region, c, size * np.array([17, 20, 38]), (25, 0, 0) + _jit(rng, 8), bump=0.1)
    cv.paint(region, (lvl < 1) & cavity[region], "gallbladder", only_where=soft + ("liver", "liver_vessel"))

    # Adrenals: thin inverted-V sheets above and medial to each kidney.
    for side, name, z0 in ((-1, "adrenal_right", 38.0), (1, "adrenal_left", 52.0)):
        c = np.array([side * 42.0, 0.4 * B, z0]) + _jit(rng, 4)
        region = cv.crop(c, (40, 40, 40))
        legs = [cv.ellipsoid(region, c + np.array([lean * 8.0, 0, 0]), (3.0, 16.0, 22.0), (0, lean * 28, side * 30))
                for lean in (-1, 1)]
        cv.paint(region, ((legs[0] < 1) | (legs[1] < 1)) & cavity[region], name,
                 only_where=soft + ("liver", "spleen"))

    # IVC (unlabelled, carves the liver), aorta (left of midline, in front of the spine).
    ivc_c = np.array([-24.0, 0.2 * B, 0.0]) + _jit(rng, 4)
    region = cv.crop(ivc_c, (25, 25, 400))
    lvl = cv.ellipsoid(region, ivc_c, (14, 10, 1e6), bump=0.1)
    cv.paint(region, (lvl < 1) & (cv.z[region] < 150), "blood_ivc",
             only_where=soft + ("liver", "liver_vessel", "pancreas"))
    ao_top = np.array([12.0, 0.24 * B, 220.0]) + _jit(rng, 3)
    ao_mid = np.array([10.0, 0.20 * B, 0.0]) + _jit(rng, 3)
    ao_bif = np.array([6.0, 0.12 * B, -130.0]) + _jit(rng, 3)
    radius = rng.uniform(9.0, 13.0)
    paths = [([ao_top, ao_mid, ao_bif], [radius, radius, radius * 0.9])]
    for side in (-1, 1):
        paths.append(([ao_bif, ao_bif + np.array([side * 45.0, 10.0, -90.0])], [radius * 0.7, radius * 0.55]))
    for pts, radii in paths:
        pts = np.array(pts)
        region = cv.crop(pts.mean(axis=0), np.ptp(pts, axis=0) / 2 + 20)
        if region:
            cv.paint(region, cv.tube(region, pts, radii) < 1, "aorta",
                     only_where=soft + ("liver", "pancreas", "heart", "blood_ivc", "fat"))

    # Spine: vertebral bodies (cortical shell, cancellous core) separated by discs; canal and posterior arch.
    vb_c = np.array([0.0, 0.45 * B + 8.0, 0.0]) + _jit(rng, 3)
    pitch = rng.uniform(30.0, 34.0)
    disc_mm = rng.uniform(6.0, 9.0)
    phase = rng.uniform(0.0, pitch)
    region = cv.crop(vb_c + np.array([0, 20, 0]), (60, 60, 400))
    xs, ys, zs = cv.coords(region)
    in_disc = np.mod(zs + phase, pitch) < disc_mm
    body = cv.ellipsoid(region, vb_c, (24.0, 19.0, 1e6), bump=0.05)
    canal_c = vb_c + np.array([0.0, 30.0, 0.0])
    canal = cv.ellipsoid(region, canal_c, (11.0, 9.0, 1e6))
    arch = cv.ellipsoid(region, canal_c + np.array([0, 2.0, 0]), (19.0, 16.0, 1e6))
    spinous = cv.tube(region, [canal_c + np.array([0, 10.0, 0]), canal_c + np.array([0, 40.0, 0])], [5.0, 4.0])
    # The arch sits at the level of the upper part of each vertebra only (gaps between laminae).
    arch_level = np.mod(zs + phase - disc_mm, pitch) < 0.6 * pitch
    bone_outer = ((body < 1) & ~in_disc) | (((arch < 1) | (spinous < 1)) & (canal >= 1) & arch_level)
    cv.paint(region, (body < 1) & in_disc, "disc")
    cv.paint(region, bone_outer, "bone_cortical")
    core = (body < 0.72) & ~in_disc & (np.mod(zs + phase - disc_mm, pitch) > 1.5) \
        & (np.mod(zs + phase - disc_mm, pitch) < pitch - disc_mm - 1.5)
    cv.paint(region, core, "bone_cancellous")
    cv.paint(region, canal < 1, "csf")
