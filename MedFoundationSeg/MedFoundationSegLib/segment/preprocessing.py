"""Slice -> model input tensor, and the transform that maps prompts in and masks out, per model (registry data).

Each model was trained with its own resize rule, interpolation and normalisation (see the `preprocessing:` blocks of
registry.yaml); using another one silently costs accuracy, so the rules are data read from the registry, not code.
Where an official inference resizes with a library, the same library does it here (OpenCV ``INTER_AREA`` for
LiteMedSAM, PIL bilinear for SAM and MobileSAM, scikit-image cubic for MedSAM), since their uint8 rounding and
filters are what the model saw and no torch mode reproduces them.
Frames: the *slice frame* is the 2D slice's own pixel grid (x = column, y = row); the *input frame* is the model's
square S x S input; the *low-res frame* is the decoder's 256 x 256 logit grid, which covers the input frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

RESIZE_RULES = ("longest_side", "stretch")
# Library resizes of the uint8 slice (as the official inferences), then torch modes for models without one.
LIBRARY_INTERPOLATIONS = ("opencv_area", "pil_bilinear", "skimage_cubic")
INTERPOLATIONS = (*LIBRARY_INTERPOLATIONS, "bilinear", "bicubic", "nearest")
NORMALIZATIONS = ("minmax", "mean_std", "none")
PADDINGS = ("bottom_right", "none")
# per_axis: x and y scaled by the resize of each axis (SAM's ResizeLongestSide); floor_longest: one factor
# S / max(H, W) for both axes, rounded down to whole pixels (LiteMedSAM's official box scaling).
BOX_SCALES = ("per_axis", "floor_longest")
# via_input: low-res logits -> input frame -> crop -> slice (SAM); direct_probability: sigmoid of the low-res logits
# resized straight to the slice (MedSAM's official inference).
POSTPROCESSES = ("via_input", "direct_probability")


class PreprocessingError(ValueError):
    """A preprocessing block, a slice or a prompt cannot be used as given."""


class UnknownModelError(PreprocessingError, KeyError):
    """The model name is not in the registry (or has no preprocessing block)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How one model wants its 2D input: see registry.yaml for the values and why each model differs."""

    input_size: int
    resize: str = "longest_side"
    interpolation: str = "bilinear"
    normalize: str = "mean_std"
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pad: str = "bottom_right"
    mask_threshold: float = 0.0
    box_scale: str = "per_axis"
    postprocess: str = "via_input"

    def __post_init__(self) -> None:
        checks = (("resize", RESIZE_RULES), ("interpolation", INTERPOLATIONS), ("normalize", NORMALIZATIONS),
                  ("pad", PADDINGS), ("box_scale", BOX_SCALES), ("postprocess", POSTPROCESSES))
        for field, allowed in checks:
            if getattr(self, field) not in allowed:
                raise PreprocessingError(f"preprocessing {field}={getattr(self, field)!r}; expected one of {allowed}")
        if int(self.input_size) < 16:
            raise PreprocessingError(f"preprocessing input_size must be >= 16; got {self.input_size}")
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3 or min(self.pixel_std) <= 0:
            raise PreprocessingError("pixel_mean and pixel_std need 3 values each, std > 0")

    @classmethod
    def from_dict(cls, block: dict) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(block) - known
        if unknown:
            raise PreprocessingError(f"unknown preprocessing keys {sorted(unknown)}; known: {sorted(known)}")
        values = dict(block)
        for key in ("pixel_mean", "pixel_std"):
            if key in values:
                values[key] = tuple(float(v) for v in values[key])
        return cls(**values)


def preprocessing_for(model_name: str) -> Preprocessing:
    """The registry's preprocessing block of a model, validated."""
    from MedFoundationSegLib.core.weights import load_registry

    models = load_registry()["models"]
    if model_name not in models:
        raise UnknownModelError(f"unknown model {model_name!r}; known models: {', '.join(models)}")
    block = models[model_name].get("preprocessing")
    if not block:
        raise UnknownModelError(f"model {model_name!r} has no preprocessing block in the registry "
                                f"(it is not a SAM-family slice model)")
    return Preprocessing.from_dict(block)


def resized_shape(slice_hw: tuple[int, int], prep: Preprocessing,
                  pixel_spacing_yx: tuple[float, float] | None = None) -> tuple[int, int]:
    """(h, w) of the slice inside the input frame.

    Square pixels follow the official rule exactly (``int(side * S / max(H, W) + 0.5)``). With non-square pixels
    (coronal/sagittal slices of thick-slice volumes) the longest-side rule keeps the *physical* aspect ratio, so the
    model sees square pixels as it did in training.
    """
    height, width = (int(v) for v in slice_hw)
    if height < 1 or width < 1:
        raise PreprocessingError(f"slice must be at least 1x1; got {height}x{width}")
    size = int(prep.input_size)
    if prep.resize == "stretch":
        return size, size
    spacing_y, spacing_x = (1.0, 1.0) if pixel_spacing_yx is None else (float(s) for s in pixel_spacing_yx)
    if not (spacing_y > 0 and spacing_x > 0):
        raise PreprocessingError(f"pixel spacing must be positive; got {pixel_spacing_yx}")
    if spacing_y == spacing_x:
        extent_y, extent_x = float(height), float(width)
    else:
        extent_y, extent_x = height * spacing_y, width * spacing_x
    scale = size * 1.0 / max(extent_y, extent_x)
    return max(1, min(size, int(extent_y * scale + 0.5))), max(1, min(size, int(extent_x * scale + 0.5)))


@dataclasses.dataclass(frozen=True)
class SliceTransform:
    """Geometry between one slice shape and the model input; the same for every slice of a volume along one axis."""

    slice_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    input_size: int
    box_scale: str = "per_axis"
    postprocess: str = "via_input"
    square_pixels: bool = True

    @property
    def scale_xy(self) -> np.ndarray:
        return np.array([self.resized_hw[1] / self.slice_hw[1], self.resized_hw[0] / self.slice_hw[0]])

    def points_to_input(self, points_xy: np.ndarray) -> np.ndarray:
        """Slice-frame (x, y) points (any leading shape) -> input-frame coordinates."""
        points_xy = np.asarray(points_xy, dtype=np.float64)
        return points_xy * self.scale_xy

    def boxes_to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Slice-frame (x0, y0, x1, y1) boxes, shape (N, 4) -> input-frame boxes."""
        boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float64)
        if self.box_scale == "floor_longest":
            if self.square_pixels:
                return np.floor(boxes_xyxy * (self.input_size / max(self.slice_hw)))
            return np.floor(boxes_xyxy * np.tile(self.scale_xy, 2))
        return boxes_xyxy * np.tile(self.scale_xy, 2)

    def logits_to_slice(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(N, C, L, L) decoder logits -> (N, C, H, W) logits on the slice grid (crop the padding, resize bilinear).

        ``direct_probability`` resizes the sigmoid instead and returns its logit, so ``> 0`` still means
        foreground exactly where the official ``> 0.5`` does."""
        logits = low_res_logits.float()
        if self.postprocess == "direct_probability":
            probability = F.interpolate(torch.sigmoid(logits), size=tuple(self.slice_hw), mode="bilinear",
                                        align_corners=False)
            return torch.logit(probability, eps=1e-7)
        size = self.input_size
        if logits.shape[-1] != size or logits.shape[-2] != size:
            logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
        logits = logits[..., : self.resized_hw[0], : self.resized_hw[1]]
        if tuple(logits.shape[-2:]) != tuple(self.slice_hw):
            logits = F.interpolate(logits, size=tuple(self.slice_hw), mode="bilinear", align_corners=False)
        return logits

    def slice_mask_to_low_res(self, mask_hw: np.ndarray, low_res_size: int = 256, logit: float = 8.0) -> np.ndarray:
        """A bool slice mask -> (low_res_size, low_res_size) logits usable as a `mask_input` prompt."""
        mask = torch.from_numpy(np.asarray(mask_hw, dtype=np.float32))[None, None]
        if tuple(mask.shape[-2:]) != tuple(self.slice_hw):
            raise PreprocessingError(f"mask shape {tuple(mask.shape[-2:])} does not match slice {self.slice_hw}")
        h = max(1, round(self.resized_hw[0] * low_res_size / self.input_size))
        w = max(1, round(self.resized_hw[1] * low_res_size / self.input_size))
        small = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        out = torch.full((low_res_size, low_res_size), -logit)
        out[:h, :w] = torch.where(small > 0.5, logit, -logit)
        return out.numpy()


def slice_transform(slice_hw: tuple[int, int], prep: Preprocessing,
                    pixel_spacing_yx: tuple[float, float] | None = None) -> SliceTransform:
    square = pixel_spacing_yx is None or float(pixel_spacing_yx[0]) == float(pixel_spacing_yx[1])
    return SliceTransform(tuple(int(v) for v in slice_hw), resized_shape(slice_hw, prep, pixel_spacing_yx),
                          int(prep.input_size), prep.box_scale, prep.postprocess, square)


def resize_uint8(slice_uint8: np.ndarray, size_hw: tuple[int, int], interpolation: str) -> np.ndarray:
    """One (H, W) uint8 slice resized by the library the model's official inference uses; uint8 out, as there."""
    height, width = (int(v) for v in size_hw)
    if interpolation == "opencv_area":
        import cv2

        cv2.setNumThreads(0)  # one slice at a time: no OpenCV thread pool beside torch's
        return cv2.resize(slice_uint8, (width, height), interpolation=cv2.INTER_AREA)
    if interpolation == "pil_bilinear":
        from PIL import Image

        return np.asarray(Image.fromarray(slice_uint8).resize((width, height), Image.BILINEAR))
    if interpolation == "skimage_cubic":
        from skimage.transform import resize

        return resize(slice_uint8, (height, width), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    raise PreprocessingError(f"{interpolation!r} is not a library resize; use one of {LIBRARY_INTERPOLATIONS}")


def _resize(slices_uint8: np.ndarray, size_hw: tuple[int, int], interpolation: str) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 1, h, w) float32 holding whole grey levels."""
    if interpolation in LIBRARY_INTERPOLATIONS:
        resized = np.stack([resize_uint8(np.ascontiguousarray(s), size_hw, interpolation) for s in slices_uint8])
        return torch.from_numpy(resized).to(torch.float32)[:, None]
    images = torch.from_numpy(np.ascontiguousarray(slices_uint8)).to(torch.float32)[:, None]
    if tuple(images.shape[-2:]) == tuple(size_hw):
        return images
    shrinking = size_hw[0] <= images.shape[-2] and size_hw[1] <= images.shape[-1]
    if interpolation == "nearest":
        return F.interpolate(images, size=size_hw, mode="nearest-exact")
    mode = "bicubic" if interpolation == "bicubic" else "bilinear"
    images = F.interpolate(images, size=size_hw, mode=mode, align_corners=False, antialias=shrinking)
    return images.round_().clamp_(0.0, 255.0)


def slices_to_input(slices_uint8: np.ndarray, transform: SliceTransform, prep: Preprocessing) -> torch.Tensor:
    """(B, H, W) uint8 windowed slices -> (B, 3, S, S) float32 model input (resize, normalise, pad)."""
    slices_uint8 = np.asarray(slices_uint8)
    if slices_uint8.dtype != np.uint8:
        raise PreprocessingError(f"slices must be windowed to uint8 first (intensity.apply_window); "
                                 f"got dtype {slices_uint8.dtype}")
    if slices_uint8.ndim == 2:
        slices_uint8 = slices_uint8[None]
    if slices_uint8.ndim != 3 or tuple(slices_uint8.shape[1:]) != tuple(transform.slice_hw):
        raise PreprocessingError(f"slices must have shape (B, {transform.slice_hw[0]}, {transform.slice_hw[1]}); "
                                 f"got {slices_uint8.shape}")
    images = _resize(slices_uint8, transform.resized_hw, prep.interpolation)
    if prep.normalize == "minmax":  # in float64 then float32, as the references compute it in numpy
        wide = images.double()
        low = wide.amin(dim=(-2, -1), keepdim=True)
        high = wide.amax(dim=(-2, -1), keepdim=True)
        images = ((wide - low) / (high - low).clamp_min(1e-8)).float()
        images = images.expand(-1, 3, -1, -1)
    elif prep.normalize == "mean_std":
        mean = torch.tensor(prep.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(prep.pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
        images = (images - mean) / std
    else:
        images = images.expand(-1, 3, -1, -1)
    size = transform.input_size
    pad_h, pad_w = size - images.shape[-2], size - images.shape[-1]
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), value=0.0)
    return images.contiguous()
