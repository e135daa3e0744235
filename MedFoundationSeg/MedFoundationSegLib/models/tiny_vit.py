"""TinyViT image encoder as MobileSAM and LiteMedSAM use it (TinyViT-5M trunk + SAM neck -> (B, 256, 64, 64)).

Stages: a two-conv patch embedding (MobileSAM: 3x3 stride 2 twice on 1024 px; LiteMedSAM: 1x1 stride 1 on 256 px),
stage 0 of MBConv blocks, stages 1-3 of windowed attention blocks with LeViT-style learned per-offset biases,
conv patch-merging between stages (the last one keeps the resolution: stride 1), then the SAM neck. All activations
are exact GELU; BatchNorm runs on its stored statistics (eval mode). MobileSAM checkpoints also carry the unused
ImageNet classifier (``norm_head``, ``head``); it is built when ``num_classes > 0`` so they load strictly.

The stem (patch embedding + stage 0) is purely convolutional, so it can run in horizontal bands of rows with a halo
that covers its receptive field: the same numbers, but no 64 MB activation per image (see ``TinyViT.stem_bands``).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

from MedFoundationSegLib.models.common import ConvBN, LayerNorm2d, attention


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def receptive_radius_px(convs) -> int:
    """How many input pixels beyond its own footprint one output pixel of a chain of convolutions sees (one side).

    ``convs`` in the order they run; each adds its kernel half-width times the stride accumulated before it.
    """
    radius, stride = 0, 1
    for conv in convs:
        kernel = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        radius += (kernel // 2) * stride
        stride *= conv.stride[0]
    return radius


class PatchEmbed(nn.Module):
    """conv-BN, GELU, conv-BN: 3 -> dim/2 -> dim channels (``seq.0``, ``seq.2`` in the checkpoints)."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, kernel_size, stride, padding),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, kernel_size, stride, padding),
        )
        self.geometry = (kernel_size, stride, padding)

    def output_size(self, size: int) -> int:
        return conv_output_size(conv_output_size(size, *self.geometry), *self.geometry)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual add, then GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.conv2 = ConvBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = ConvBN(hidden, dim, 1, bn_weight_init=0.0)
        self.act3 = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        return self.act3(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """1x1 conv, GELU, 3x3 depthwise conv (stride 2, or 1 for the last merge), GELU, 1x1 conv; returns tokens."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    def output_size(self, size: int) -> int:
        return conv_output_size(size, 3, self.stride, 1)

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x_bchw))
        x = self.act(self.conv2(x))
        return self.conv3(x).flatten(2).transpose(1, 2)  # (B, H'*W', C')


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on the (B, C, H, W) map, then a merge to tokens."""

    def __init__(self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x_bchw: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x_bchw = block(x_bchw)
        return self.downsample(x_bchw)


def window_offset_index(window: int) -> tuple[torch.Tensor, int]:
    """(N, N) index of each query/key pair's |dy|,|dx| offset class in a window of N = window^2 tokens.

    Classes are numbered in first-seen order over row-major (query, key) pairs, which is how the checkpoints'
    ``attention_biases`` columns are ordered.
    """
    points = list(itertools.product(range(window), range(window)))
    classes: dict[tuple[int, int], int] = {}
    index = []
    for (y1, x1), (y2, x2) in itertools.product(points, points):
        offset = (abs(y1 - y2), abs(x1 - x2))
        index.append(classes.setdefault(offset, len(classes)))
    n = len(points)
    return torch.tensor(index, dtype=torch.long).view(n, n), len(classes)


class WindowAttention(nn.Module):
    """LayerNorm, then multi-head attention inside one window with a learned bias per head and offset class.

    The fused qkv projection is laid out per head as [q | k | v] (LeViT order), unlike SAM's ViT ([q | k | v] per
    whole projection).
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.window = window
        index, n_offsets = window_offset_index(window)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, n_offsets))
        self.register_buffer("attention_bias_idxs", index, persistent=False)

    def constant_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers derived from the configuration, not stored in checkpoints (rebuilt after a meta-device build)."""
        return {"attention_bias_idxs": window_offset_index(self.window)[0]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.key_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.key_dim, dim=3)  # each (B, heads, N, key_dim)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N), broadcast over windows
        out = attention(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class TokenMLP(nn.Module):
    """LayerNorm, fc1, GELU, fc2 (TinyViT's MLP carries its own norm)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded bottom/right, no mask) + residual, depthwise 3x3 conv-BN, MLP + residual."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.mlp = TokenMLP(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, 1, local_conv_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        b, n, c = x.shape
        ws = self.window
        if h == ws and w == ws:
            attended = self.attn(x)
        else:
            grid = x.view(b, h, w, c)
            pad_b, pad_r = -h % ws, -w % ws
            if pad_b or pad_r:
                grid = F.pad(grid, (0, 0, 0, pad_r, 0, pad_b))
            hp, wp = h + pad_b, w + pad_r
            nh, nw = hp // ws, wp // ws
            windows = grid.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
            windows = self.attn(windows)
            grid = windows.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
            if pad_b or pad_r:
                grid = grid[:, :h, :w].contiguous()
            attended = grid.view(b, n, c)
        x = x + attended
        # tokens (B, N, C) seen as a channels-last (B, C, H, W) map: no copy in, none out
        x = self.local_conv(x.view(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(b, n, c)
        return x + self.mlp(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks on tokens of a known grid, then an optional merge."""

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float, local_conv_size: int,
                 downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window, mlp_ratio, local_conv_size) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, hw)
        if self.downsample is None:
            return x
        b, _, c = x.shape
        return self.downsample(x.view(b, hw[0], hw[1], c).permute(0, 3, 1, 2))


class TinyViT(nn.Module):
    """(B, 3, img_size, img_size) normalised image -> (B, 256, 64, 64) embedding."""

    def __init__(self, *, img_size: int, in_chans: int = 3, embed_dims=(64, 128, 160, 320), depths=(2, 2, 6, 2),
                 num_heads=(2, 4, 5, 10), window_sizes=(7, 7, 14, 7), downsample_strides=(2, 2, 1),
                 patch_kernel: int = 3, patch_stride: int = 2, patch_padding: int = 1, mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3, out_chans: int = 256,
                 num_classes: int = 0) -> None:
        super().__init__()
        n_stages = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == n_stages
                and len(downsample_strides) == n_stages - 1):
            raise ValueError("TinyViT: embed_dims, depths, num_heads, window_sizes need one entry per stage and "
                             "downsample_strides one fewer")
        self.img_size = img_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], patch_kernel, patch_stride, patch_padding)
        size = self.patch_embed.output_size(img_size)
        self.stage_sizes: list[int] = []
        self.layers = nn.ModuleList()
        for i in range(n_stages):
            self.stage_sizes.append(size)
            merge = None
            if i < n_stages - 1:
                merge = PatchMerging(embed_dims[i], embed_dims[i + 1], downsample_strides[i])
                next_size = merge.output_size(size)
            if i == 0:
                layer = ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, merge)
            else:
                layer = AttentionStage(embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                                       local_conv_size, merge)
            self.layers.append(layer)
            if merge is not None:
                size = next_size
        self.embedding_size = size
        # How many row bands the stem runs in (0 or 1: the whole image at once); set by the encoder runtime.
        self.stem_bands = 0
        self.stem_stride = img_size // self.stage_sizes[1] if n_stages > 1 else 1
        stem_convs = [m for m in (*self.patch_embed.modules(), *self.layers[0].modules()) if isinstance(m, nn.Conv2d)]
        self.stem_halo_rows = math.ceil(receptive_radius_px(stem_convs) / self.stem_stride)
        if num_classes > 0:  # ImageNet head kept only so that MobileSAM's checkpoint loads strictly; never run
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"TinyViT expects (B, C, {self.img_size}, {self.img_size}) images, got {tuple(x.shape)}")
        x = self._stem(x)
        for i in range(1, len(self.layers)):
            size = self.stage_sizes[i]
            x = self.layers[i](x, (size, size))
        b, _, c = x.shape
        side = self.embedding_size
        return self.neck(x.view(b, side, side, c).permute(0, 3, 1, 2))

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + stage 0 -> (B, tokens, C); in ``stem_bands`` row bands when set.

        Each band is computed from its input rows plus ``stem_halo_rows`` output rows' worth of context on either
        side (clipped at the image edge, where the zero padding is then the same as for the whole image) and cropped
        back, so every output row sees exactly the inputs it sees in one pass. Why: the widest stage-0 activation is
        256 channels at 256x256 (64 MB per image), which the C allocator maps and unmaps on every call (a page fault
        per 4 kB, about a third of the encoder's time on a 2-core CPU); bands of a quarter stay in the reused heap
        and in cache.
        """
        if self.stem_bands <= 1 or len(self.layers) < 2:
            return self.layers[0](self.patch_embed(x))
        stride, halo = self.stem_stride, self.stem_halo_rows
        rows = x.shape[-2] // stride
        per_band = -(-rows // self.stem_bands)
        pieces = []
        for first in range(0, rows, per_band):
            last = min(rows, first + per_band)
            top, bottom = max(0, first - halo), min(rows, last + halo)
            tokens = self.layers[0](self.patch_embed(x[:, :, top * stride: bottom * stride]))
            b, n, c = tokens.shape
            band = tokens.view(b, bottom - top, n // (bottom - top), c)
            pieces.append(band[:, first - top: last - top])
        grid = torch.cat(pieces, dim=1)
        return grid.reshape(grid.shape[0], -1, grid.shape[-1])
