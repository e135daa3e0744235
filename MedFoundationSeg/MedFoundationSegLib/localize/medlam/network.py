"""The MedLAM 3D CNN, laid out so the released checkpoint loads strictly (see spec/medlam.md section 1).

Module names, nesting (``convX_Y.model.conv1_1.Conv``), the flatten order of the FC head, trilinear upsampling with
align_corners=False and the [upsampled, skip] concatenation order all follow the reference, because numerics are
checked against it with shared random weights.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PATCH_SIZE = (64, 64, 64)
DIS_RATIO_MM = (1500.0, 600.0, 600.0)  # tanh scale of the RDR head, axes (z, y, x)
FEATURE_NAMES = ("feature0", "feature1", "feature2")  # 16^3, 32^3, 64^3 decoder maps of a 64^3 patch
DECODER_MODULES = ("conv5_1", "conv5_2", "conv6_1", "conv6_2", "conv7_1", "conv7_2", "conv8_1", "conv8_2",
                   "classification")


class MedLAMWeightsError(ValueError):
    """A state_dict does not fit the MedLAM layout (names the missing/unexpected keys)."""


class _ConvWrapper(nn.Module):
    """Holds the conv as ``.Conv`` so the key path reads ``model.conv1_1.Conv.weight``."""

    def __init__(self, in_chns: int, out_chns: int):
        super().__init__()
        self.Conv = nn.Conv3d(in_chns, out_chns, kernel_size=3, stride=1, padding=1, dilation=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Conv(x)


class SingleConv3D(nn.Module):
    """Conv3d(k3) -> InstanceNorm3d (no affine, no running stats) -> ReLU."""

    def __init__(self, in_chns: int, out_chns: int):
        super().__init__()
        self.model = nn.Sequential(OrderedDict([
            ("conv1_1", _ConvWrapper(in_chns, out_chns)),
            ("norm1_1", nn.InstanceNorm3d(out_chns)),
            ("relu1_1", nn.ReLU(inplace=True)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MedLAM(nn.Module):
    """Encoder (4 poolings) + FC position head on the 4^3 bottleneck + U-Net decoder giving 3 feature scales."""

    def __init__(self, in_chns: int = 1, base_chns: int = 24, n_classes: int = 3,
                 patch_size=PATCH_SIZE, droprate: float = 0.0):
        super().__init__()
        b = base_chns
        self.patch_size = tuple(int(p) for p in patch_size)
        widths = {  # name: (in, out)
            "conv0_1": (in_chns, 2 * b), "conv0_2": (2 * b, 2 * b),
            "conv1_1": (2 * b, 2 * b), "conv1_2": (2 * b, 2 * b),
            "conv2_1": (2 * b, 2 * b), "conv2_2": (2 * b, 4 * b),
            "conv3_1": (4 * b, 4 * b), "conv3_2": (4 * b, 8 * b),
            "conv4_1": (8 * b, 8 * b), "conv4_2": (8 * b, 16 * b),
            "conv5_1": (16 * b + 8 * b, 8 * b), "conv5_2": (8 * b, 8 * b),
            "conv6_1": (8 * b + 4 * b, 4 * b), "conv6_2": (4 * b, 4 * b),
            "conv7_1": (4 * b + 2 * b, 4 * b), "conv7_2": (4 * b, 4 * b),
            "conv8_1": (4 * b + 2 * b, 4 * b), "conv8_2": (4 * b, 4 * b),
        }
        for name, (cin, cout) in widths.items():
            setattr(self, name, SingleConv3D(cin, cout))
        self.downsample = nn.MaxPool3d(kernel_size=2, stride=2)
        self.upsample = nn.Upsample(scale_factor=2, mode="trilinear")
        self.drop = nn.Dropout(p=droprate)
        n_fc_in = int(torch.tensor(self.patch_size).prod().item() // 4096 * 16 * b)
        self.fc1 = nn.Linear(n_fc_in, 8 * b)
        self.fc2 = nn.Linear(8 * b, 4 * b)
        self.fc3 = nn.Linear(4 * b, 3)
        self.classification = nn.Sequential(nn.Conv3d(4 * b, n_classes, kernel_size=1))

    def forward(self, x: torch.Tensor, out_fc: bool = False, decoder: bool = True, out_feature: bool = False,
                out_classification: bool = True, feature_norm: bool = False,
                feature_scales: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """Reference signature; ``feature_scales`` (a subset of FEATURE_NAMES) stops the decoder early when the
        finer maps (and the classification head) are not needed, which saves most of the compute on CPU."""
        if x.dim() != 5 or x.shape[1] != 1:
            raise ValueError(f"MedLAM expects a [B,1,D,H,W] tensor; got shape {tuple(x.shape)}")
        if any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"MedLAM patch sides must be divisible by 16; got {tuple(x.shape[2:])}")
        if out_fc and tuple(x.shape[2:]) != self.patch_size:
            raise ValueError(f"the FC head needs {self.patch_size} patches; got {tuple(x.shape[2:])}")
        out: dict[str, torch.Tensor] = {}
        conv0 = self.conv0_2(self.conv0_1(x))
        conv1 = self.conv1_2(self.conv1_1(self.downsample(conv0)))
        conv2 = self.conv2_2(self.conv2_1(self.downsample(conv1)))
        conv3 = self.conv3_2(self.conv3_1(self.downsample(conv2)))
        conv4 = self.drop(self.conv4_2(self.conv4_1(self.downsample(conv3))))
        if out_fc:
            out["fc_position"] = self.fc3(self.fc2(self.fc1(torch.flatten(conv4, 1))))
        if decoder and (out_feature or out_classification):
            wanted = FEATURE_NAMES if feature_scales is None else tuple(feature_scales)
            depth = 3 if out_classification else max((FEATURE_NAMES.index(n) + 1 for n in wanted), default=0)
            feats = []
            if depth:
                conv4, conv3, conv2, conv1, conv0 = self._decoder_inputs(conv4, conv3, conv2, conv1, conv0)
                up = self.conv5_2(self.conv5_1(torch.cat([self.upsample(conv4), conv3], 1)))
                stages = ((self.conv6_1, self.conv6_2, conv2), (self.conv7_1, self.conv7_2, conv1),
                          (self.conv8_1, self.conv8_2, conv0))
                for first, second, skip in stages[:depth]:
                    up = second(first(torch.cat([self.upsample(up), skip], 1)))
                    feats.append(up)
            if out_feature:
                for name, feat in zip(FEATURE_NAMES, feats):
                    if name in wanted:
                        out[name] = F.normalize(feat, dim=1) if feature_norm else feat
            if out_classification:
                out["prob"] = torch.sigmoid(self.classification(feats[2]))
        return out


    def _decoder_inputs(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The encoder maps in the decoder's dtype and layout (a no-op unless set_precision made it bf16)."""
        dtype = decoder_dtype(self)
        if all(t.dtype == dtype for t in tensors):
            return tensors
        return tuple(t.to(dtype=dtype, memory_format=torch.channels_last_3d) for t in tensors)


def strip_module_prefix(state_dict: dict) -> dict:
    """Accept the release file (DataParallel ``module.`` keys) or a plain one."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def load_medlam_weights(model: MedLAM, state_dict: dict) -> MedLAM:
    """Strict load with a readable error instead of PyTorch's wall of key names."""
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]  # a training checkpoint (.tar dict)
    state_dict = strip_module_prefix(state_dict)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state_dict) if tuple(expected[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        raise MedLAMWeightsError(
            "not a MedLAM checkpoint: "
            f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
            f"{len(wrong)} with wrong shape {wrong[:3]}")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    return model


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': fp16 on CUDA (as the reference), bf16 on CPUs with native bf16 (AVX-512 BF16 / AMX), else fp32.

    CPU bf16 rounds only the decoder (set_precision); on bench_localize.py --compare-fp32 (random weights, 6 liver
    points) it moved no point at all, but MSS argmax near-ties can flip, so pass "fp32" for bit-reference results.
    fp16 is refused on CPU (no fast kernels there).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown MedLAM precision {precision!r}; use one of {PRECISIONS}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("MedLAM fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "fp16"
    from MedFoundationSegLib.runtime.encoder_runtime import cpu_has_fast_bf16

    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def set_precision(model: MedLAM, precision: str) -> MedLAM:
    """fp32: the reference numerics. fp16: the whole network in half (the reference's CUDA mode). bf16 (CPU): only the
    decoder (about 85 % of a 64^3 forward's multiply-adds, all at 16^3..64^3) in bf16 with the channels-last 3D layout
    of oneDNN's fast kernels. The encoder and FC head stay fp32, so the RDR jump, where tanh(fc(A) - fc(B)) x 1500 mm
    turns a 1e-3 error into millimetres, is computed exactly as in fp32; only the MSS features are rounded."""
    if precision == "fp32":
        return model.float().to(memory_format=torch.contiguous_format)
    if precision == "fp16":
        return model.half()
    if precision != "bf16":
        raise ValueError(f"unknown MedLAM precision {precision!r}; use fp32, bf16 or fp16")
    model.float()
    for name in DECODER_MODULES:
        getattr(model, name).to(dtype=torch.bfloat16, memory_format=torch.channels_last_3d)
    return model


def build_medlam(weights: str | Path | dict | None = "medlam", device: str | torch.device | None = None,
                 seed: int = 2023, precision: str = "auto") -> MedLAM:
    """Inference model in eval mode, in the precision of :func:`resolve_precision`.

    ``weights``: a registry name, a file path, a state_dict, or None for seeded random weights (timing, tests).
    """
    dev = pick_device(device)
    chosen = resolve_precision(precision, dev)
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MedLAM()
    else:
        model = MedLAM()
        if isinstance(weights, dict):
            state = weights
        else:
            from MedFoundationSegLib.core.weights import load_state_dict

            state = load_state_dict(str(weights))
        load_medlam_weights(model, state)
    model.eval().to(dev)
    return set_precision(model, chosen)


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the network's input must have (its first convolution's)."""
    return next(model.parameters()).dtype


def decoder_dtype(model: MedLAM) -> torch.dtype:
    return model.conv8_2.model.conv1_1.Conv.weight.dtype


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
