"""Independent re-implementations of the models' official 2D box inference, written from the official scripts'
semantics (not from this project's preprocessing module), to check the product against.

- LiteMedSAM: CVPR 2024 "MedSAM on laptop" inference (``CVPR24_LiteMedSAM_infer.py``).
- SAM / MobileSAM: ``segment_anything.SamPredictor`` with ``ResizeLongestSide`` (torchvision on PIL images).
- MedSAM: ``MedSAM_Inference.py``.
Each takes the raw network (fp32, no runtime tweaks), one uint8 slice and one integer box (x0, y0, x1, y1).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import transform as sk_transform

SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
SAM_STD = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)


def _longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def _decode(model, embedding, box_input: np.ndarray) -> torch.Tensor:
    boxes = torch.as_tensor(np.asarray(box_input, float)[None, None], dtype=torch.float)
    sparse, dense = model.prompt_encoder(points=None, boxes=boxes, masks=None)
    low_res, _ = model.mask_decoder(image_embeddings=embedding, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=False)
    return low_res


def litemedsam_input(slice_uint8: np.ndarray) -> torch.Tensor:
    image = np.repeat(slice_uint8[:, :, None], 3, axis=-1)
    new_h, new_w = _longest_side_shape(*slice_uint8.shape, 256)
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    small = (small - small.min()) / np.clip(small.max() - small.min(), a_min=1e-8, a_max=None)
    small = np.pad(small, ((0, 256 - new_h), (0, 256 - new_w), (0, 0)))
    return torch.tensor(small).float().permute(2, 0, 1).unsqueeze(0)


def sam_input(slice_uint8: np.ndarray) -> torch.Tensor:
    image = np.repeat(slice_uint8[:, :, None], 3, axis=-1)
    new_h, new_w = _longest_side_shape(*slice_uint8.shape, 1024)
    resized = np.array(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    x = torch.as_tensor(resized).permute(2, 0, 1).contiguous()
    x = (x - SAM_MEAN) / SAM_STD
    return F.pad(x, (0, 1024 - new_w, 0, 1024 - new_h))[None]


def medsam_input(slice_uint8: np.ndarray) -> torch.Tensor:
    image = np.repeat(slice_uint8[:, :, None], 3, axis=-1)
    big = sk_transform.resize(image, (1024, 1024), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    big = (big - big.min()) / np.clip(big.max() - big.min(), a_min=1e-8, a_max=None)
    return torch.tensor(big).float().permute(2, 0, 1).unsqueeze(0)


@torch.no_grad()
def litemedsam_official(model, slice_uint8: np.ndarray, box) -> np.ndarray:
    height, width = slice_uint8.shape
    new_h, new_w = _longest_side_shape(height, width, 256)
    embedding = model.image_encoder(litemedsam_input(slice_uint8))
    ratio = 256 / max(height, width)
    box_256 = np.array([int(b * ratio) for b in box])
    low_res = _decode(model, embedding, box_256)[..., :new_h, :new_w]
    logits = F.interpolate(low_res, size=(height, width), mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits) > 0.5)[0, 0].numpy()


@torch.no_grad()
def sam_official(model, slice_uint8: np.ndarray, box) -> np.ndarray:
    height, width = slice_uint8.shape
    new_h, new_w = _longest_side_shape(height, width, 1024)
    embedding = model.image_encoder(sam_input(slice_uint8))
    corners = np.asarray(box, float).reshape(-1, 2, 2).copy()
    corners[..., 0] *= new_w / width
    corners[..., 1] *= new_h / height
    low_res = _decode(model, embedding, corners.reshape(-1, 4)[0])
    masks = F.interpolate(low_res, (1024, 1024), mode="bilinear", align_corners=False)[..., :new_h, :new_w]
    masks = F.interpolate(masks, (height, width), mode="bilinear", align_corners=False)
    return (masks > 0.0)[0, 0].numpy()


@torch.no_grad()
def medsam_official(model, slice_uint8: np.ndarray, box) -> np.ndarray:
    height, width = slice_uint8.shape
    embedding = model.image_encoder(medsam_input(slice_uint8))
    box_1024 = np.asarray(box, float) / np.array([width, height, width, height]) * 1024
    low_res = _decode(model, embedding, box_1024)
    probability = F.interpolate(torch.sigmoid(low_res), size=(height, width), mode="bilinear", align_corners=False)
    return (probability > 0.5)[0, 0].numpy()


OFFICIAL_INPUT = {"litemedsam": litemedsam_input, "mobilesam": sam_input, "sam_vit_b": sam_input, "sam_vit_l": sam_input,
                  "sam_vit_h": sam_input, "medsam_vit_b": medsam_input}
OFFICIAL = {"litemedsam": litemedsam_official, "mobilesam": sam_official, "sam_vit_b": sam_official,
            "sam_vit_l": sam_official, "sam_vit_h": sam_official, "medsam_vit_b": medsam_official}


def _bbox_xyxy(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(mask)
    if xs.size == 0 or xs.max() == xs.min() or ys.max() == ys.min():
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _largest(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    return labels == (1 + int(np.argmax(sizes)))


def real_slice_cases(per_volume: int = 8) -> list[tuple[str, object, int, tuple[int, int, int, int]]]:
    """(label, volume, axial index, box) on real public volumes: MNI152 T1 MRI with boxes of its white matter (whole,
    one hemisphere), and a brain CT with boxes of the whole brain and of one hemisphere."""
    from MedFoundationSegLib.core.volume import read_volume
    from MedFoundationSegLib.sampledata.public_volumes import public_volume_path

    cases = []
    t1 = read_volume(public_volume_path("mni152_t1"))
    wm = read_volume(public_volume_path("mni152_wm")).array > 128
    for n, k in enumerate(np.linspace(60, 130, per_volume).astype(int)):
        mask = wm[k].copy()
        if n % 2:
            mask[:, mask.shape[1] // 2:] = False
        cases.append((f"mni152_t1 z={k} {'left WM' if n % 2 else 'WM'}", t1, int(k), _bbox_xyxy(mask)))
    ct = read_volume(public_volume_path("ct_head"))
    for n, k in enumerate(np.linspace(45, 140, per_volume).astype(int)):
        mask = _largest(ct.array[k] != 0)
        if n % 2:
            mask[:, mask.shape[1] // 2:] = False
        cases.append((f"ct_head z={k} {'left brain' if n % 2 else 'brain'}", ct, int(k), _bbox_xyxy(mask)))
    return [case for case in cases if case[3] is not None]


@torch.no_grad()
def litemedsam_official_3d(model, slices_uint8: np.ndarray, box_xyzxyz) -> np.ndarray:
    """The CVPR24 LiteMedSAM 3D procedure on (D, H, W) uint8 slices: the middle slice from the box, then up and down,
    each slice boxed from the previous mask resized with INTER_AREA in the 256 frame, grown by 3 and clipped. The z
    range is taken inclusive at both ends (the product's reading of a 3D box; the script stops one short of each)."""
    x0, y0, z0, x1, y1, z1 = (int(v) for v in box_xyzxyz)
    depth, height, width = slices_uint8.shape
    new_h, new_w = _longest_side_shape(height, width, 256)
    ratio = 256 / max(height, width)
    rect = np.array([int(b * ratio) for b in (x0, y0, x1, y1)])
    out = np.zeros(slices_uint8.shape, bool)
    middle = (z0 + z1) // 2
    for k in [*range(middle, z1 + 1), *range(middle - 1, z0 - 1, -1)]:
        box = rect
        if k != middle:
            previous = out[k - 1] if k > middle else out[k + 1]
            small = cv2.resize(previous.astype(np.uint8), (new_w, new_h), interpolation=cv2.INTER_AREA)
            if small.max() > 0:
                small = np.pad(small, ((0, 256 - new_h), (0, 256 - new_w)))
                rows, cols = np.nonzero(small > 0)
                box = np.array([max(0, cols.min() - 3), max(0, rows.min() - 3), min(256, cols.max() + 3),
                                min(256, rows.max() + 3)])
        embedding = model.image_encoder(litemedsam_input(slices_uint8[k]))
        low_res = _decode(model, embedding, box)[..., :new_h, :new_w]
        logits = F.interpolate(low_res, size=(height, width), mode="bilinear", align_corners=False)
        out[k] = (torch.sigmoid(logits) > 0.5)[0, 0].numpy()
    return out
