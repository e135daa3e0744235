"""SAM-family networks (SAM ViT-B/L/H, MedSAM, MobileSAM, LiteMedSAM) in plain PyTorch, checkpoint-compatible."""

from .build import CheckpointMismatchError, ModelConfigError, architecture, build_model, model_names
from .sam import SamModel

__all__ = ["CheckpointMismatchError", "ModelConfigError", "SamModel", "architecture", "build_model", "model_names"]
