"""Overlay pictures of results: windowed CT slices with predicted structures filled and ground truth outlined.

Used by the demo and the benchmarks so a person can look at what the numbers mean. Plain numpy + scikit-image;
PNGs are written with SimpleITK (no plotting library needed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries
from skimage.transform import resize

PALETTE = np.array([
    [230, 100, 40], [60, 160, 230], [240, 200, 40], [120, 200, 80], [200, 90, 200], [90, 220, 210],
    [250, 130, 160], [150, 120, 250], [200, 200, 200], [120, 80, 40],
], np.float32)


def window_to_uint8(slice_hu: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    low = level - width / 2
    return (np.clip((slice_hu.astype(np.float32) - low) / width, 0, 1) * 255).astype(np.uint8)


def overlay_slice(slice_hu: np.ndarray, predicted_labels: np.ndarray, truth_labels: np.ndarray | None = None, *,
                  alpha: float = 0.45, pixel_aspect: float = 1.0) -> np.ndarray:
    """(H, W) HU slice + label slices -> (H', W', 3) uint8 RGB; ``pixel_aspect`` = row spacing / column spacing."""
    gray = window_to_uint8(slice_hu).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for label in np.unique(predicted_labels[predicted_labels > 0]):
        color = PALETTE[(int(label) - 1) % len(PALETTE)]
        region = predicted_labels == label
        rgb[region] = (1 - alpha) * rgb[region] + alpha * color
        rgb[find_boundaries(region, mode="inner")] = color
    if truth_labels is not None:
        rgb[find_boundaries(truth_labels, mode="inner") & (truth_labels > 0)] = 255.0
    if abs(pixel_aspect - 1.0) > 0.05:
        height, width = rgb.shape[:2]
        rgb = resize(rgb, (int(round(height * pixel_aspect)), width), order=1, preserve_range=True)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def montage(tiles: list[list[np.ndarray]], gap: int = 4, tile_height: int | None = 220) -> np.ndarray:
    """Rows of RGB tiles -> one RGB image; each tile scaled to ``tile_height`` (aspect kept), dark gaps between."""
    if tile_height:
        tiles = [[resize(t, (tile_height, max(1, round(t.shape[1] * tile_height / t.shape[0]))), order=1,
                         preserve_range=True).astype(np.uint8) for t in row] for row in tiles]
    height = max(t.shape[0] for row in tiles for t in row)
    width = max(t.shape[1] for row in tiles for t in row)
    columns = max(len(row) for row in tiles)
    canvas = np.full((len(tiles) * (height + gap) - gap, columns * (width + gap) - gap, 3), 20, np.uint8)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            canvas[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    return canvas


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    import SimpleITK as sitk

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(rgb, np.uint8), isVector=True), str(tmp))
    os.replace(tmp, path)
    return path


def case_tiles(image_kji: np.ndarray, predicted_kji: np.ndarray, truth_kji: np.ndarray | None, spacing_mm,
               label_ids: list[int]) -> list[np.ndarray]:
    """Three views of a case: axial through the centre of the first and last structure, and a coronal slice."""
    tiles = []
    for label in (label_ids[0], label_ids[-1]):
        k = np.nonzero(predicted_kji == label)[0] if (predicted_kji == label).any() else [image_kji.shape[0] // 2]
        index = int(np.median(k))
        tiles.append(overlay_slice(image_kji[index], predicted_kji[index],
                                   None if truth_kji is None else truth_kji[index],
                                   pixel_aspect=spacing_mm[1] / spacing_mm[0]))
    j = np.nonzero(predicted_kji > 0)[1]
    index = int(np.median(j)) if len(j) else image_kji.shape[1] // 2
    tiles.append(overlay_slice(image_kji[::-1, index], predicted_kji[::-1, index],
                               None if truth_kji is None else truth_kji[::-1, index],
                               pixel_aspect=spacing_mm[2] / spacing_mm[0]))
    return tiles
