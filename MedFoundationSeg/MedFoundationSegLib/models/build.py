"""Build a SAM-family model from its ``architecture:`` block in registry.yaml, optionally with its weights.

    model = build_model("litemedsam", weights="registry")    # verified cached checkpoint
    model = build_model("sam_vit_h", device="meta")           # shapes only, no memory (key/shape checks)

Weights are loaded with ``strict=True``; a checkpoint that does not fit raises :class:`CheckpointMismatchError`
naming the file and the first offending keys, instead of silently running a half-initialised network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from MedFoundationSegLib.models.mask_decoder import MaskDecoder
from MedFoundationSegLib.models.prompt_encoder import PromptEncoder
from MedFoundationSegLib.models.sam import SamModel
from MedFoundationSegLib.models.tiny_vit import TinyViT
from MedFoundationSegLib.models.transformer import TwoWayTransformer
from MedFoundationSegLib.models.vit import ImageEncoderViT

ENCODERS = {"vit": ImageEncoderViT, "tiny_vit": TinyViT}
SHOWN_KEYS = 5


class ModelConfigError(ValueError):
    """Unknown model name, or an architecture block that does not describe a buildable network."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or tensor shapes differ from the network it is loaded into."""


def _registry_models() -> dict:
    from MedFoundationSegLib.core.weights import load_registry

    return load_registry()["models"]


def model_names() -> list[str]:
    """Registry models this builder can make (those with an ``architecture:`` block)."""
    return sorted(name for name, entry in _registry_models().items() if isinstance(entry.get("architecture"), dict))


def architecture(name: str) -> dict:
    """The ``architecture:`` block of a registry model; a clear error lists the valid names otherwise."""
    models = _registry_models()
    entry = models.get(name)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("architecture"), Mapping):
        raise ModelConfigError(f"unknown SAM-family model {name!r}; valid names: {', '.join(model_names())}")
    return dict(entry["architecture"])


def _section(arch: Mapping, key: str, name: str) -> dict:
    value = arch.get(key)
    if not isinstance(value, Mapping):
        raise ModelConfigError(f"registry.yaml: models.{name}.architecture.{key} must be a mapping, got {value!r}")
    return dict(value)


def _construct(cls, kwargs: dict, where: str):
    try:
        return cls(**kwargs)
    except TypeError as error:  # unknown/missing keyword: a typo in the YAML block
        raise ModelConfigError(f"registry.yaml: {where}: {error}") from None


def construct_model(name: str, arch: Mapping) -> SamModel:
    """Instantiate (random init) the network an architecture block describes, on the current default device."""
    encoder_cfg = _section(arch, "encoder", name)
    encoder_type = encoder_cfg.pop("type", None)
    if encoder_type not in ENCODERS:
        raise ModelConfigError(f"registry.yaml: models.{name}.architecture.encoder.type must be one of "
                               f"{sorted(ENCODERS)}, got {encoder_type!r}")
    image_encoder = _construct(ENCODERS[encoder_type], encoder_cfg, f"models.{name}.architecture.encoder")
    img_size = image_encoder.img_size

    prompt_cfg = _section(arch, "prompt_encoder", name)
    embed_dim = prompt_cfg.get("embed_dim", 256)
    grid = image_encoder.embedding_size
    prompt_encoder = _construct(PromptEncoder, {"image_embedding_size": (grid, grid),
                                                "input_image_size": (img_size, img_size), **prompt_cfg},
                                f"models.{name}.architecture.prompt_encoder")

    decoder_cfg = _section(arch, "mask_decoder", name)
    transformer_keys = ("depth", "num_heads", "mlp_dim", "attention_downsample_rate")
    transformer_cfg = {key: decoder_cfg.pop(key) for key in transformer_keys if key in decoder_cfg}
    transformer = _construct(TwoWayTransformer, {"embedding_dim": embed_dim, **transformer_cfg},
                             f"models.{name}.architecture.mask_decoder")
    mask_decoder = _construct(MaskDecoder, {"transformer_dim": embed_dim, "transformer": transformer, **decoder_cfg},
                              f"models.{name}.architecture.mask_decoder")
    return SamModel(image_encoder, prompt_encoder, mask_decoder, name=name)


def check_state_dict(model: torch.nn.Module, state_dict: Mapping, source: str) -> None:
    """Raise CheckpointMismatchError listing the first missing, unexpected and wrongly shaped keys."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [f"{key} {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
                for key in expected if key in state_dict and hasattr(state_dict[key], "shape")
                and tuple(state_dict[key].shape) != tuple(expected[key].shape)]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", reshaped)):
        if keys:
            more = f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:SHOWN_KEYS])}{more}")
    name = getattr(model, "name", "") or type(model).__name__
    raise CheckpointMismatchError(f"checkpoint {source} does not fit model {name!r}: " + "; ".join(parts))


def _state_dict_from(name: str, weights) -> tuple[Mapping, str]:
    from MedFoundationSegLib.core import weights as weight_store

    if isinstance(weights, Mapping):
        return weights, "<in-memory state_dict>"
    if isinstance(weights, str) and weights == "registry":
        path = weight_store.weights_path(name)
        return weight_store.load_state_dict(name), str(path)
    if isinstance(weights, (str, os.PathLike)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")
        return weight_store.load_state_dict(path), str(path)
    raise TypeError(f"weights must be None, 'registry', a file path or a state_dict, not {type(weights).__name__}")


def build_model(name: str, *, weights=None, device: str | torch.device = "cpu") -> SamModel:
    """A SAM-family model in eval mode.

    weights: None (random init), "registry" (the verified cached checkpoint of ``name``), a checkpoint path, or an
    already loaded state_dict. device: where the model lives; "meta" builds shapes only (no weights allowed).
    """
    arch = architecture(name)
    device = torch.device(device)
    if device.type == "meta":
        if weights is not None:
            raise ValueError("device='meta' builds an empty model for shape checks; it cannot hold weights")
        with torch.device("meta"):
            return construct_model(name, arch).eval()
    if weights is None:
        return construct_model(name, arch).to(device).eval()
    state_dict, source = _state_dict_from(name, weights)
    if isinstance(weights, Mapping):  # the caller's tensors: copy them into a normally built model
        model = construct_model(name, arch)
        check_state_dict(model, state_dict, source)
        model.load_state_dict(state_dict, strict=True)
    else:  # a freshly read file: adopt its tensors (no random init, one copy in memory: matters for ViT-H)
        with torch.device("meta"):
            model = construct_model(name, arch)
        check_state_dict(model, state_dict, source)
        state_dict = {key: value.float() if value.is_floating_point() else value for key, value in state_dict.items()}
        model.load_state_dict(state_dict, strict=True, assign=True)
        _rebuild_constant_buffers(model)
    return model.to(device).eval()


def _rebuild_constant_buffers(model: torch.nn.Module) -> None:
    """Non-checkpoint buffers (index tables, pixel statistics) of a model built on the meta device."""
    for module in model.modules():
        if hasattr(module, "constant_buffers"):
            for key, value in module.constant_buffers().items():
                module.register_buffer(key, value, persistent=False)
    leftovers = [name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta]
    if leftovers:
        raise RuntimeError(f"model still has unmaterialised tensors after loading: {leftovers[:SHOWN_KEYS]}")
