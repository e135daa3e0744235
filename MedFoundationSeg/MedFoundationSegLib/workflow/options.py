"""The one options type of a run: the Slicer panels, the ``medfoundationseg`` commands and the Slicer CLI module
(MedFoundationSegBatch.xml) all read and write these fields, so a choice means the same everywhere.

Each field's ``metadata`` holds its command-line flag (camelCase, as the CLI XML's ``longflag``), its choices and its
help text; ``add_arguments`` builds argparse options from them and ``from_arguments`` reads them back.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any

# How a 3D box becomes slice prompts (see segment/propagate.py): box_guided (default: middle slice from the box, then
# the previous mask's box capped by the 3D box), box (MedLSAM: the box on every slice), every_k (box_guided on key
# slices + contour interpolation: fewest encoder passes), guided (stop rules may leave the box), reference (the peer
# LiteMedSAM 3D procedure).
SEGMENTATION_MODES = ("box_guided", "box", "every_k", "guided", "reference")
# Propagating a drawn segment from its slices: stop rules on every slice (guided) or key slices + interpolation.
PROPAGATION_MODES = ("guided", "every_k")
ENGINES = ("auto", "medlam", "registration")
DEVICES = ("auto", "cpu", "cuda", "mps")
REFINE_METHODS = ("graphcut", "geodesic", "growcut", "none")
AXES = ("axial", "coronal", "sagittal")
# planes: the box segmented along all three axes, probabilities averaged; models: the box segmented by ``model`` and
# ``fusion_model``, kept where they agree and decided by a graph cut where they do not (segment/model_fusion.py)
FUSIONS = ("none", "planes", "models")
OVERLAP_POLICIES = ("score", "order")
OUTPUT_FORMATS = ("seg.nrrd", "nifti", "dicomseg")


def _option(default, flag: str | None = None, *, choices=None, help: str = "", kind=None):
    """A field with its command-line description; ``flag`` None keeps it off the command line (panel-only)."""
    return dataclasses.field(default=default, metadata={"flag": flag, "choices": choices, "help": help,
                                                        "kind": kind})


@dataclasses.dataclass
class Options:
    """Every method choice of a localize + segment + refine run."""

    engine: str = _option("auto", "engine", choices=ENGINES, help="localization engine (auto = MedLAM when its "
                                                                    "weights are cached, else registration)")
    model: str = _option("litemedsam", "model", help="box-prompt model from the registry")
    device: str = _option("auto", "device", choices=DEVICES, help="torch device")
    window: Any = _option("auto", None)  # "auto" | a preset name | {"level": .., "width": ..}
    axis: str = _option("axial", "axis", choices=AXES, help="slice axis the 2D model works on")
    mode: str = _option("box_guided", "mode", choices=SEGMENTATION_MODES, help="how a 3D box becomes slice prompts")
    # Padding of a *localized* box (its walls are uncertain); a box the user drew is taken as drawn.
    padding_mm: float = _option(5.0, "boxPadding", kind=float, help="padding of localized boxes in mm")
    padding_fraction: float | None = _option(None, None)  # cap padding at this fraction of the smaller box side
    drawn_box_padding_mm: float = _option(0.0, None)
    # The box's first and last slices are the structure's (a box the user drew around it): slice propagation neither
    # leaves them nor stops inside them (segment/propagate.py), and on its middle slice the structure reaches the box's
    # four sides (PredictorSegmenter.segment_fitting_box). A localized box is an estimate: False.
    exact_range: bool = _option(False, None)
    # A box covering at least this share of the slice (a body outline, a whole head) is segmented with
    # large_box_model when its weights are cached (LiteMedSAM, trained on organ crops, segments what is inside such
    # a box), unpadded, and cleared of the exterior background; "" turns the routing off.
    large_box_model: str = _option("mobilesam", None)
    large_box_fraction: float = _option(0.45, None)
    fusion: str = _option("none", "fusion", choices=FUSIONS,
                          help="combine answers: none, planes (axial+coronal+sagittal), models (model+fusionModel)")
    fusion_model: str = _option("mobilesam", "fusionModel", help="second model of fusion=models")
    every_k: int | None = _option(None, None)  # every_k step in slices; None = about 7.5 mm apart
    refine: str = _option("graphcut", "refine", choices=REFINE_METHODS, help="refinement after the model")
    # Include/exclude clicks on a segment re-prompt the model on the clicked slices and spread the correction before
    # the refinement (Session.correct); False: the refinement alone, with the clicks as hard seeds.
    reprompt_clicks: bool = _option(True, None)
    # The model asked again on a clicked slice: "auto" (the default) is the registry's `prompting.click_model` of the
    # segmenting model (one trained with point prompts) when its weights are cached, else the model itself; "" is the
    # model itself. A Session keeping one predictor uses the model itself (two models would evict each other's
    # embeddings).
    click_model: str = _option("auto", None)
    # After the re-prompt, a structure head learned from the shown mask and the clicks predicts the box's slices, so
    # a correction reaches the slices where the same error recurs (segment/head_learning.py).
    learn: bool = _option(True, None)
    # The head a result hands back also holds the structure's shape and atlases (workflow/learning.with_shape), for a
    # caller that stores heads; False (the panel without a Heads folder) spares each correction building them.
    head_shape: bool = _option(True, None)
    # How far a click pulls the model's probability towards its label in the refinement after it, fading as
    # exp(-distance / click_reach_mm) (segment/click_evidence.py click_influence); 0: only the click's own disk. None: by
    # the slices (Session.correct): on thick slices 14 mm, and an exclude click pulls only on its own slice there;
    # on thin slices 8 mm in 3D (docs/benchmarks.md, "click reach").
    click_reach_mm: float | None = _option(None, None)
    overlap_policy: str = _option("score", "overlapPolicy", choices=OVERLAP_POLICIES,
                                  help="who wins a voxel two structures claim (model score or template order)")
    seed: int = _option(0, "seed", kind=int, help="random seed (deterministic results)")
    output_format: str = _option("seg.nrrd,nifti", "outputFormat",
                                 help="comma-separated output formats: seg.nrrd, nifti, dicomseg (DICOM inputs)")
    cache_mb: int = _option(2048, None)  # slice-embedding memory budget
    spl: bool = _option(False, None)  # localize sub-boxes (z-slabs) of long structures
    slice_interval: int = _option(2, None)  # SPL slab thickness in the template's slices
    recentre_iterations: int = _option(0, None)  # MedLAM: extra RDR steps from the current estimate

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            value = getattr(self, field.name)
            if choices and value not in choices:
                raise ValueError(f"unknown {field.name} {value!r}; use one of {', '.join(choices)}")
        for name in ("padding_mm", "drawn_box_padding_mm", "click_reach_mm"):
            value = getattr(self, name)
            if name == "click_reach_mm" and value is None:
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a number of millimetres >= 0; got {value!r}")
        formats = self.output_formats
        unknown = [f for f in formats if f not in OUTPUT_FORMATS]
        if unknown or not formats:
            raise ValueError(f"output format {self.output_format!r}: use a comma-separated list of "
                             f"{', '.join(OUTPUT_FORMATS)}")
        if self.padding_fraction is not None and not 0 < float(self.padding_fraction) <= 1:
            raise ValueError(f"padding_fraction must be in (0, 1]; got {self.padding_fraction!r}")

    @property
    def output_formats(self) -> tuple[str, ...]:
        return tuple(part.strip().lower() for part in str(self.output_format).split(",") if part.strip())

    def replace(self, **changes) -> Options:
        return dataclasses.replace(self, **changes)

    def propagation_mode(self) -> str:
        """The procedure that propagates a drawn segment for this ``mode`` (reference works from a box only)."""
        if self.mode == "reference":
            raise ValueError("the reference procedure segments from a box only; choose guided or every_k to "
                             "propagate a drawn segment")
        return "every_k" if self.mode == "every_k" else "guided"


def command_line_fields() -> list[dataclasses.Field]:
    return [field for field in dataclasses.fields(Options) if field.metadata.get("flag")]


def add_arguments(group) -> None:
    """argparse options ``--<flag>`` for every command-line field, with the defaults of ``Options``."""
    for field in command_line_fields():
        flag = field.metadata["flag"]
        kind = field.metadata.get("kind") or str
        kebab = "".join(f"-{c.lower()}" if c.isupper() else c for c in flag)
        names = [f"--{flag}"] + ([f"--{kebab}"] if kebab != flag else [])
        group.add_argument(*names, dest=field.name, type=kind, default=field.default,
                           choices=field.metadata.get("choices"), help=field.metadata.get("help"))


def from_arguments(args: argparse.Namespace, **overrides) -> Options:
    values = {field.name: getattr(args, field.name) for field in command_line_fields() if hasattr(args, field.name)}
    return Options(**dict(values, **overrides))
