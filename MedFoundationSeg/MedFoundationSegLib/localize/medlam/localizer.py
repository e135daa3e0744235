"""MedLAM query localization: one RDR jump from centre patches, optional re-centring, one MSS refinement (spec s.2).

Speed (CPU): the query reference embedding is computed once per query volume (encoder + FC only), all structures'
points go through re-centring and MSS as one batched stream, the decoder stops at the finest MSS scale asked for,
and the MSS template matching runs by FFT (see correlate_fft).

Works in the padded LAS 3 mm working grid of ``preprocess``; points go back to LPS through that grid's affine, so the
boxes on the original grid are right for any direction matrix. Support (template) features are computed once per
template set, model and mode, and cached on the TemplateSet.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from MedFoundationSegLib.core.boxes import (
    LPS_TO_REF,
    REF_TO_LPS,
    StructureBox,
    fraction_of_box_inside,
    lps_box_from_extreme_points,
    make_structure_box,
)
from MedFoundationSegLib.core.progress import Cancelled
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.localize.extreme_points import split_count
from MedFoundationSegLib.localize.medlam.matching import crop_patches, mss_best_offsets
from MedFoundationSegLib.localize.medlam.network import (
    DIS_RATIO_MM,
    FEATURE_NAMES,
    PRECISIONS,
    MedLAM,
    build_medlam,
    decoder_dtype,
    model_device,
    model_dtype,
)
from MedFoundationSegLib.localize.preprocess import WorkVolume, check_volume_3d, preprocess
from MedFoundationSegLib.localize.templates import TemplateSet

log = logging.getLogger(__name__)
Progress = Callable[[float, str], None]
SCALE_DIVISOR = {"feature0": 4, "feature1": 2, "feature2": 1}  # feature map side = patch / divisor


@dataclasses.dataclass
class MedLAMConfig:
    mode: str = "WPL"  # or "SPL"
    slice_interval: int = 2
    feature_scales: tuple[str, ...] = FEATURE_NAMES  # empty -> MSS off (the reference's [] -> [''] bug fixed)
    query_patches: int = 10
    query_jitter_vox: int = 10
    recentre_iterations: int = 0  # extra RDR steps from the current estimate (not in the reference)
    batch_size: int = 4
    seed: int = 2023
    modality: str = "auto"
    precision: str = "auto"  # network precision when the localizer builds it (network.resolve_precision)

    def __post_init__(self):
        self.mode = self.mode.upper()
        if self.mode not in ("WPL", "SPL"):
            raise ValueError(f"mode must be 'WPL' or 'SPL'; got {self.mode!r}")
        unknown = [s for s in self.feature_scales if s not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown feature scale(s) {unknown}; choose from {FEATURE_NAMES} (or none: MSS off)")
        if self.query_patches < 1:
            raise ValueError("query_patches must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; use one of {PRECISIONS}")


@dataclasses.dataclass
class SupportFeatures:
    """Per structure: mean FC of the support points [P,3] and summed normalised centre features per scale."""

    position: dict[str, torch.Tensor]
    templates: dict[str, dict[str, torch.Tensor]]  # structure -> scale -> [P, C, k, k, k]
    n_support: int
    split: dict[str, int]


class MedLAMLocalizer:
    def __init__(self, weights="medlam", device=None, config: MedLAMConfig | None = None, model: MedLAM | None = None):
        self.config = config or MedLAMConfig()
        self.model = model if model is not None else build_medlam(weights, device, precision=self.config.precision)
        self.timings: dict[str, float] = {}
        self.patch = int(self.model.patch_size[0])  # 64 for the released network; smaller only in fast tests
        self.half = self.patch // 2

    # --- network helpers ----------------------------------------------------------------------------------------
    @property
    def _fingerprint(self) -> tuple:
        w = self.model.fc3.weight.detach().float().cpu()
        return (id(self.model), float(w.sum()), float(w.abs().sum()), str(decoder_dtype(self.model)))

    def _clock(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds

    def _run(self, patches: np.ndarray, fc: bool, scales: tuple[str, ...],
             reduce: Callable[[dict, slice], dict] | None = None,
             cancelled: Callable[[], bool] | None = None) -> dict[str, torch.Tensor]:
        """Batched forward; the decoder runs only as deep as the finest wanted scale. Outputs are float32 on CPU.

        ``reduce(outputs, batch_slice)`` shrinks each batch's outputs as soon as they exist (support centres, MSS
        argmax), so a 64^3 x 96-channel map is never kept for more than one batch.
        """
        device, dtype = model_device(self.model), model_dtype(self.model)
        keys = (["fc_position"] if fc else []) + list(scales)
        outs: dict[str, list] = {}
        with torch.inference_mode():
            for start in range(0, len(patches), self.config.batch_size):
                if cancelled is not None and cancelled():
                    raise Cancelled("MedLAM localization cancelled")
                x = torch.from_numpy(patches[start:start + self.config.batch_size]).to(device=device, dtype=dtype)
                t = time.perf_counter()
                result = self.model(x, out_fc=fc, decoder=bool(scales), out_feature=bool(scales),
                                    out_classification=False, feature_scales=scales)
                result = {key: result[key].float().cpu() for key in keys}
                self._clock("network_forward_s", time.perf_counter() - t)
                if reduce is not None:
                    t = time.perf_counter()
                    result = reduce(result, slice(start, start + len(x)))
                    self._clock("reduce_s", time.perf_counter() - t)
                for key, value in result.items():
                    outs.setdefault(key, []).append(value)
        return {k: torch.cat(v) for k, v in outs.items()}

    # --- supports -----------------------------------------------------------------------------------------------
    def support_features(self, template_set: TemplateSet, structures: list[str],
                         cancelled: Callable[[], bool] | None = None) -> SupportFeatures:
        """FC vectors and normalised centre features at every support point; one batched pass per template over
        all structures' points, keeping only the k^3 centres. Cached per structure on the template set, so asking
        for a subset (or one more structure) later computes only what is missing."""
        cfg = self.config
        key = ("medlam", self._fingerprint, cfg.mode, cfg.slice_interval, tuple(cfg.feature_scales))
        cache = template_set.feature_cache.setdefault(key, {})
        missing = [s for s in dict.fromkeys(structures) if s not in cache]
        if missing:
            cache.update(self._compute_support(template_set, missing, cancelled))
        return SupportFeatures({s: cache[s][0] for s in structures}, {s: cache[s][1] for s in structures},
                               len(template_set.templates), {s: cache[s][2] for s in structures})

    def _compute_support(self, template_set: TemplateSet, structures: list[str],
                         cancelled: Callable[[], bool] | None) -> dict[str, tuple]:
        """structure -> (mean FC [P,3], {scale: summed centre features [P,C,k,k,k]}, SPL slab count)."""
        cfg = self.config
        split = {s: 1 for s in structures}
        if cfg.mode == "SPL":
            for s in structures:
                split[s] = max(1, min(split_count(t.z_extent_mm(s), cfg.slice_interval) for t in template_set.templates))
        scales = tuple(cfg.feature_scales)

        def centres_only(out: dict, _batch: slice) -> dict:
            kept = {"fc_position": out["fc_position"]}
            for scale in scales:
                d = self.patch // SCALE_DIVISOR[scale]
                r = max(1, d // 16)  # = int(4 * d / 64) of the reference for 64^3 patches: 2^3, 4^3, 8^3
                lo, hi = d // 2 - r, d // 2 + r
                kept[scale] = F.normalize(out[scale][:, :, lo:hi, lo:hi, lo:hi], dim=1)
            return kept

        position: dict[str, torch.Tensor | None] = {s: None for s in structures}
        feats: dict[str, dict] = {s: {k: None for k in scales} for s in structures}
        for template in template_set.templates:
            if cancelled is not None and cancelled():
                raise Cancelled("MedLAM support features cancelled")
            work = preprocess(template.image, cfg.modality, pad=self.half)
            counts, all_points = [], []
            for s in structures:
                groups = template.slab_points(s, split[s]) if split[s] > 1 else [template.extreme_points(s)]
                points = np.concatenate([work.zyx_from_lps(g)[LPS_TO_REF] for g in groups])
                counts.append(len(points))
                all_points.append(points)
            centres = np.round(np.concatenate(all_points)).astype(int)
            out = self._run(crop_patches(work.array, centres, self.patch), fc=True, scales=scales,
                            reduce=centres_only, cancelled=cancelled)
            bounds = np.cumsum([0] + counts)
            for s, lo, hi in zip(structures, bounds[:-1], bounds[1:]):
                fc = out["fc_position"][lo:hi]
                position[s] = fc if position[s] is None else position[s] + fc
                for scale in scales:
                    centre = out[scale][lo:hi]
                    feats[s][scale] = centre if feats[s][scale] is None else feats[s][scale] + centre
        n = len(template_set.templates)
        return {s: (position[s] / n, feats[s], split[s]) for s in structures}

    # --- query --------------------------------------------------------------------------------------------------
    def _query_reference(self, work: WorkVolume, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
        """Mean FC of patches jittered around the padded centre (non-air centres, bounded retries) and their mean
        position in mm. Encoder + FC head only, once per query volume, shared by every structure."""
        cfg = self.config
        shape = np.array(work.array.shape)
        centres = []
        for _ in range(cfg.query_patches):
            for _attempt in range(100):  # the reference loops forever on an all-air centre
                c = np.array([rng.integers(n // 2 - cfg.query_jitter_vox, n // 2 + cfg.query_jitter_vox)
                              for n in shape])
                if work.array[tuple(c)] >= 0.001:
                    break
            centres.append(c)
        centres = np.array(centres)
        fc = self._run(crop_patches(work.array, centres, self.patch), fc=True, scales=())["fc_position"]
        return fc.mean(0), centres.mean(0) * work.spacing_mm

    def _rdr(self, support_pos: torch.Tensor, query_fc: torch.Tensor, query_pos_mm: np.ndarray,
             spacing_mm: float) -> np.ndarray:
        ratio = torch.tensor(DIS_RATIO_MM)
        shift_mm = (ratio * torch.tanh(support_pos - query_fc)).numpy()
        return np.round((query_pos_mm + shift_mm) / spacing_mm)

    def _recentre(self, work: WorkVolume, points: np.ndarray, support_pos: torch.Tensor,
                  cancelled: Callable[[], bool] | None) -> np.ndarray:
        """One more RDR jump from each current estimate (re-embedded there), all points in one batched pass."""
        inside = np.clip(points, self.half, np.array(work.array.shape) - self.half - 1).astype(int)
        fc = self._run(crop_patches(work.array, inside, self.patch), fc=True, scales=(),
                       cancelled=cancelled)["fc_position"]
        shift_mm = (torch.tensor(DIS_RATIO_MM) * torch.tanh(support_pos - fc)).numpy()
        return np.round(inside + shift_mm / work.spacing_mm)

    def _mss(self, work: WorkVolume, points: np.ndarray, support_templates: dict[str, torch.Tensor],
             cancelled: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One multi-scale similarity pass over any number of points (each with its own templates [P,C,k,k,k]);
        returns refined points and the per-point best mean cosine."""
        scales = tuple(self.config.feature_scales)
        shape = np.array(work.array.shape)
        clipped = np.clip(points, self.half, shape - self.half - 1).astype(int)

        def best(out: dict, batch: slice) -> dict:
            index, score = mss_best_offsets({s: out[s] for s in scales},
                                            {s: support_templates[s][batch] for s in scales}, self.patch)
            return {"index": index, "score": score}

        out = self._run(crop_patches(work.array, clipped, self.patch), fc=False, scales=scales, reduce=best,
                        cancelled=cancelled)
        offsets = np.stack(np.unravel_index(out["index"].numpy(), (self.patch,) * 3), axis=1) - (self.half - 1)
        peak = (out["score"].numpy() - 1.0) / max(1, len(scales))  # argmax - 31 at 64^3, as the reference
        return clipped + offsets, peak

    def localize(self, templates: TemplateSet | list, query: Volume, structures: list[str] | None = None,
                 progress: Progress | None = None, cancelled: Callable[[], bool] | None = None
                 ) -> dict[str, StructureBox]:
        cfg = self.config
        template_set = templates if isinstance(templates, TemplateSet) else TemplateSet(list(templates))
        structures = list(structures or template_set.structures())
        template_set.check(structures)
        check_volume_3d(query, "query")
        report = progress or (lambda f, m: None)

        def check():
            if cancelled is not None and cancelled():
                raise Cancelled("MedLAM localization cancelled")

        self.timings = {}
        t0 = time.perf_counter()
        report(0.0, "support features")
        support = self.support_features(template_set, structures, cancelled)
        t1 = time.perf_counter()
        check()
        report(0.3, "preprocessing the query")
        work = preprocess(query, cfg.modality, pad=self.half)
        t2 = time.perf_counter()
        check()
        rng = np.random.default_rng(cfg.seed)
        report(0.4, "RDR jump")
        query_fc, query_pos_mm = self._query_reference(work, rng)
        t3 = time.perf_counter()
        # All structures' points travel together through re-centring and MSS, so every forward is a full batch.
        counts = [len(support.position[s]) for s in structures]
        bounds = np.cumsum([0] + counts)
        support_pos = torch.cat([support.position[s] for s in structures])
        points = self._rdr(support_pos, query_fc, query_pos_mm, work.spacing_mm)
        rdr_points = points.copy()
        steps = [points.copy()]
        for iteration in range(cfg.recentre_iterations):  # move: re-embed at the estimate and jump again from there
            check()
            report(0.45, f"re-centring {iteration + 1}/{cfg.recentre_iterations}")
            points = self._recentre(work, points, support_pos, cancelled)
            steps.append(points.copy())
        t4 = time.perf_counter()
        peak = np.full(len(points), np.nan)
        if cfg.feature_scales:
            report(0.5, f"MSS refinement of {len(points)} points")
            forward_before = self.timings.get("network_forward_s", 0.0)
            templates_all = {k: torch.cat([support.templates[s][k] for s in structures]) for k in cfg.feature_scales}
            points, peak = self._mss(work, points, templates_all, cancelled)
            self.timings["mss_network_s"] = self.timings.get("network_forward_s", 0.0) - forward_before
            self.timings["mss_similarity_s"] = self.timings.get("reduce_s", 0.0)
        t5 = time.perf_counter()
        results = {}
        for s, lo, hi in zip(structures, bounds[:-1], bounds[1:]):
            results[s] = self._structure_box(s, query, work, support, points[lo:hi], peak[lo:hi],
                                             rdr_points[lo:hi], [st[lo:hi] for st in steps])
        t6 = time.perf_counter()
        self.timings.update({"support_s": t1 - t0, "query_preprocess_s": t2 - t1, "query_network_s": t6 - t2,
                             "query_reference_s": t3 - t2, "recentre_s": t4 - t3, "mss_s": t5 - t4,
                             "n_points": float(len(points))})
        report(1.0, "done")
        return results

    def _structure_box(self, s: str, query: Volume, work: WorkVolume, support: SupportFeatures, points: np.ndarray,
                       peak: np.ndarray, rdr_points: np.ndarray, steps: list[np.ndarray]) -> StructureBox:
        cfg = self.config
        n_groups = support.split[s]
        groups = [points[6 * g:6 * g + 6] for g in range(n_groups)]
        lps_groups = [work.lps_from_zyx(g)[REF_TO_LPS] for g in groups]
        whole = _whole_from_slabs(lps_groups)
        confidence = float(np.clip(np.nanmean(peak) / support.n_support, 0, 1)) if cfg.feature_scales else 0.0
        # The MSS clip pulls every point into the volume, so a cut by the field of view shows only in the RDR
        # jumps: the share of their box inside the volume is the structure's; under half inside reads as absent.
        unpadded = np.all((rdr_points >= work.pad - 1) & (rdr_points <= np.array(work.array.shape) - work.pad), 1)
        box = make_structure_box(s, whole, query, "medlam", confidence,
                                 slab_points_lps=lps_groups if n_groups > 1 else None,
                                 details={"mode": cfg.mode, "mss_peak_cosine": np.round(peak, 4).tolist(),
                                          "rdr_inside": unpadded.tolist(),
                                          "recentre_steps_vox": [np.round(st).astype(int).tolist() for st in steps],
                                          "points_zyx_vox": np.asarray(points, int).tolist()})
        if not unpadded.all() and box.present:
            rdr_lps = _whole_from_slabs([work.lps_from_zyx(rdr_points[6 * g:6 * g + 6])[REF_TO_LPS]
                                         for g in range(n_groups)])
            fraction = fraction_of_box_inside(query.ijk_to_lps, query.shape_kji, lps_box_from_extreme_points(rdr_lps))
            box = (dataclasses.replace(box, fraction_inside=fraction) if fraction >= 0.5 else
                   dataclasses.replace(box, present=False, box_ijk=None, box_lps_mm=None, fraction_inside=fraction,
                                       details={**box.details, "reason": "most of it lies outside the volume"}))
        return box


def _whole_from_slabs(groups_lps: list[np.ndarray]) -> np.ndarray:
    """The whole-structure extreme points of SPL slabs: each wall from the slab that reaches furthest."""
    if len(groups_lps) == 1:
        return groups_lps[0]
    stack = np.stack(groups_lps)  # (G, 6, 3)
    out = np.empty((6, 3))
    for i, (axis, pick) in enumerate([(0, np.argmin), (0, np.argmax), (1, np.argmin), (1, np.argmax),
                                      (2, np.argmin), (2, np.argmax)]):
        out[i] = stack[pick(stack[:, i, axis]), i]
    return out


def localize_medlam(templates, query: Volume, structures=None, weights="medlam", device=None,
                    config: MedLAMConfig | None = None, seed: int | None = None, mode: str | None = None,
                    progress=None, cancelled=None) -> dict[str, StructureBox]:
    """One-call MedLAM localization (builds the network; keep a MedLAMLocalizer to reuse it and its caches)."""
    config = config or MedLAMConfig()
    if seed is not None:
        config = dataclasses.replace(config, seed=int(seed))
    if mode is not None:
        config = dataclasses.replace(config, mode=mode)
    return MedLAMLocalizer(weights, device, config).localize(templates, query, structures, progress, cancelled)
