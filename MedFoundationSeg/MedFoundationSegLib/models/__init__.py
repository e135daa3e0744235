"""SAM-family networks (SAM ViT-B/L/H, MedSAM, MobileSAM, LiteMedSAM) in plain PyTorch, checkpoint-compatible."""

from MedFoundationSegLib.models.build import (
    CheckpointMismatchError,
    ModelConfigError,
    architecture,
    build_model,
    model_names,
)
from MedFoundationSegLib.models.sam import SamModel

__all__ = ["CheckpointMismatchError", "ModelConfigError", "SamModel", "architecture", "build_model", "model_names"]
