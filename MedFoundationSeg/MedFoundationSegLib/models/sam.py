"""The container every SAM-family model is: ``image_encoder``, ``prompt_encoder``, ``mask_decoder``.

Same public attribute names and call signatures as the reference ``Sam`` module, so a predictor written against
SAM drives MobileSAM, LiteMedSAM and MedSAM unchanged. ``pixel_mean``/``pixel_std`` are SAM's normalisation constants,
kept as non-persistent buffers (never in state_dict(), as in the released checkpoints); whether a model's
preprocessing uses them is the predictor's business (LiteMedSAM and MedSAM do not).
"""

from __future__ import annotations

import torch
from torch import nn

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class SamModel(nn.Module):
    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(self, image_encoder: nn.Module, prompt_encoder: nn.Module, mask_decoder: nn.Module, *,
                 name: str = "", pixel_mean=SAM_PIXEL_MEAN, pixel_std=SAM_PIXEL_STD) -> None:
        super().__init__()
        self.name = name
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self._pixel_stats = (tuple(pixel_mean), tuple(pixel_std))
        for key, value in self.constant_buffers().items():
            self.register_buffer(key, value, persistent=False)

    def constant_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers that are configuration, not checkpoint content (rebuilt after a meta-device build)."""
        mean, std = self._pixel_stats
        return {"pixel_mean": torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1),
                "pixel_std": torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def image_size(self) -> int:
        """Side of the square input frame the encoder takes (1024 for SAM/MedSAM/MobileSAM, 256 for LiteMedSAM)."""
        return int(self.image_encoder.img_size)

    @property
    def low_res_size(self) -> int:
        """Side of the low-res logits the decoder returns (4x the embedding grid: 256)."""
        return int(self.prompt_encoder.mask_input_size[0])

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) already-preprocessed images -> (B, 256, 64, 64) embeddings."""
        return self.image_encoder(images)

    def decode(self, image_embeddings: torch.Tensor, *, boxes: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None, masks: torch.Tensor | None = None,
               multimask_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts in the input frame's pixels -> (low-res logits (B, 1 or 3, 256, 256), predicted IoU (B, 1 or 3))."""
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=masks)
        return self.mask_decoder(image_embeddings=image_embeddings, image_pe=self.prompt_encoder.get_dense_pe(),
                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                 multimask_output=multimask_output)

    def forward(self, images: torch.Tensor, *, boxes: torch.Tensor | None = None,
                points: tuple[torch.Tensor, torch.Tensor] | None = None, masks: torch.Tensor | None = None,
                multimask_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode then decode, one prompt set per image."""
        return self.decode(self.encode(images), boxes=boxes, points=points, masks=masks,
                           multimask_output=multimask_output)
