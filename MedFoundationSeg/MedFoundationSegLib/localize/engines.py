"""Which localizer runs (MedLAM when its weights are there, else registration), and one call that runs it.

Both localizers take a template set and a query volume and return ``{structure: StructureBox}``.
"""

from __future__ import annotations

from MedFoundationSegLib.core import weights
from MedFoundationSegLib.core.boxes import StructureBox
from MedFoundationSegLib.core.progress import CancelCheck, ProgressCallback
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.runtime import retained_heap

ENGINE_NAMES = ("auto", "medlam", "registration")


def choose_localizer(requested: str = "auto", medlam_weights="medlam") -> tuple[str, str]:
    """(engine, reason): MedLAM when its weights are in the cache (or given), else the registration localizer.

    ``medlam_weights``: a registry name (the cache is checked), or a path, a state_dict, a built network or None
    (seeded random weights) that MedLAM uses as given."""
    if requested not in ENGINE_NAMES:
        raise ValueError(f"unknown localization engine {requested!r}; use auto, medlam or registration")
    if requested == "registration":
        return "registration", "registration localizer requested"
    if not isinstance(medlam_weights, str) or medlam_weights not in weights.model_names():
        return "medlam", "MedLAM with the weights given"
    path, status = weights.cached_status(medlam_weights)
    if status.startswith("ok"):
        return "medlam", f"MedLAM weights found ({path.name})"
    if requested == "medlam":
        raise weights.MissingWeightsError(f"MedLAM weights are {status}; fetch them with: "
                                          "medfoundationseg weights fetch medlam")
    return "registration", (f"MedLAM weights {status}: using the registration localizer "
                            "(fetch them with `medfoundationseg weights fetch medlam`)")


def localize(template_set, volume: Volume, engine: str, *, structures=None, seed: int = 0, spl: bool = False,
             slice_interval: int = 2, recentre_iterations: int = 0, medlam_weights="medlam",
             progress: ProgressCallback | None = None, cancelled: CancelCheck | None = None
             ) -> dict[str, StructureBox]:
    """Run ``engine`` (medlam | registration). ``spl``: also localize z-slabs of ``slice_interval`` template slices
    (sub-patch localization); ``recentre_iterations``: MedLAM's extra relative-distance steps."""
    from MedFoundationSegLib.localize.preprocess import check_volume_3d

    check_volume_3d(volume, "query")
    for template in getattr(template_set, "templates", []):
        check_volume_3d(template.image, "template")
    if engine == "registration":
        from MedFoundationSegLib.localize.registration import localize_registration

        return localize_registration(template_set, volume, structures, spl=spl, slice_interval=slice_interval,
                                     progress=progress, cancelled=cancelled)
    if engine == "medlam":
        from torch import nn

        from MedFoundationSegLib.localize.medlam.localizer import MedLAMConfig, MedLAMLocalizer

        retained_heap.end_lingering()  # its 3D blocks fragment a retained heap (runtime/retained_heap.py)

        config = MedLAMConfig(mode="SPL" if spl else "WPL", slice_interval=slice_interval,
                              recentre_iterations=recentre_iterations, seed=int(seed))
        if isinstance(medlam_weights, nn.Module):
            localizer = MedLAMLocalizer(model=medlam_weights, config=config)
        else:
            localizer = MedLAMLocalizer(medlam_weights, config=config)
        return localizer.localize(template_set, volume, structures, progress, cancelled)
    raise ValueError(f"unknown localization engine {engine!r}")

