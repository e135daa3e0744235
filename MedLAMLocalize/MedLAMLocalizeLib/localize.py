"""MedLAM query localization: one RDR jump from centre patches, optional re-centring, one MSS refinement (spec s.2).

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

from MedFoundationSegLib.volume import Volume

from .boxes import LPS_TO_REF, REF_TO_LPS, StructureBox, make_structure_box
from .network import DIS_RATIO_MM, FEATURE_NAMES, MedLAM, build_medlam, model_device, model_dtype
from .preprocess import WorkVolume, check_volume_3d, preprocess
from .registration import Cancelled
from .templates import TemplateSet, split_count

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

    def __post_init__(self):
        self.mode = self.mode.upper()
        if self.mode not in ("WPL", "SPL"):
            raise ValueError(f"mode must be 'WPL' or 'SPL'; got {self.mode!r}")
        unknown = [s for s in self.feature_scales if s not in FEATURE_NAMES]
        if unknown:
            raise ValueError(f"unknown feature scale(s) {unknown}; choose from {FEATURE_NAMES} (or none: MSS off)")
        if self.query_patches < 1:
            raise ValueError("query_patches must be >= 1")


def crop_patches(array_zyx: np.ndarray, centres_zyx: np.ndarray, size: int = 64) -> np.ndarray:
    """[N,1,s,s,s] patches [c-s/2, c+s/2) around integer centres; zero outside the array."""
    half = size // 2
    out = np.zeros((len(centres_zyx), 1, size, size, size), np.float32)
    shape = np.array(array_zyx.shape)
    for n, centre in enumerate(np.asarray(centres_zyx, int)):
        lo = centre - half
        hi = centre + half
        src_lo = np.maximum(lo, 0)
        src_hi = np.minimum(hi, shape)
        if np.any(src_hi <= src_lo):
            continue
        dst_lo = src_lo - lo
        dst_hi = dst_lo + (src_hi - src_lo)
        out[n, 0, dst_lo[0]:dst_hi[0], dst_lo[1]:dst_hi[1], dst_lo[2]:dst_hi[2]] = \
            array_zyx[src_lo[0]:src_hi[0], src_lo[1]:src_hi[1], src_lo[2]:src_hi[2]]
    return out


@dataclasses.dataclass
class SupportFeatures:
    """Per structure: mean FC of the support points [P,3] and summed normalised centre features per scale."""

    position: dict[str, torch.Tensor]
    templates: dict[str, dict[str, torch.Tensor]]  # structure -> scale -> [P, C, k, k, k]
    n_support: int
    split: dict[str, int]


class MedLAMLocalizer:
    def __init__(self, weights="medlam", device=None, config: MedLAMConfig | None = None, model: MedLAM | None = None):
        self.model = model if model is not None else build_medlam(weights, device)
        self.config = config or MedLAMConfig()
        self.timings: dict[str, float] = {}
        self.patch = int(self.model.patch_size[0])  # 64 for the released network; smaller only in fast tests
        self.half = self.patch // 2

    # --- network helpers ----------------------------------------------------------------------------------------
    @property
    def _fingerprint(self) -> tuple:
        w = self.model.fc3.weight.detach().float().cpu()
        return (id(self.model), float(w.sum()), float(w.abs().sum()))

    def _run(self, patches: np.ndarray, fc: bool, scales: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """Batched forward; the decoder runs only when feature scales are wanted. Outputs are float32 on CPU."""
        device, dtype = model_device(self.model), model_dtype(self.model)
        outs: dict[str, list] = {}
        with torch.inference_mode():
            for start in range(0, len(patches), self.config.batch_size):
                x = torch.from_numpy(patches[start:start + self.config.batch_size]).to(device=device, dtype=dtype)
                result = self.model(x, out_fc=fc, decoder=bool(scales), out_feature=bool(scales),
                                    out_classification=False, feature_scales=scales)
                for key in (["fc_position"] if fc else []) + list(scales):
                    outs.setdefault(key, []).append(result[key].float().cpu())
        return {k: torch.cat(v) for k, v in outs.items()}

    # --- supports -----------------------------------------------------------------------------------------------
    def support_features(self, template_set: TemplateSet, structures: list[str],
                         cancelled: Callable[[], bool] | None = None) -> SupportFeatures:
        cfg = self.config
        split = {s: 1 for s in structures}
        if cfg.mode == "SPL":
            for s in structures:
                split[s] = max(1, min(split_count(t.z_extent_mm(s), cfg.slice_interval) for t in template_set.templates))
        key = ("medlam", self._fingerprint, tuple(structures), cfg.mode, cfg.slice_interval, tuple(cfg.feature_scales))
        if key in template_set.feature_cache:
            return template_set.feature_cache[key]
        position = {s: None for s in structures}
        feats = {s: {k: None for k in cfg.feature_scales} for s in structures}
        for template in template_set.templates:
            if cancelled is not None and cancelled():
                raise Cancelled("MedLAM support features cancelled")
            work = preprocess(template.image, cfg.modality, pad=self.half)
            for s in structures:
                if split[s] > 1:
                    groups = template.slab_points(s, split[s])
                else:
                    groups = [template.extreme_points(s)]
                ref_points = np.concatenate([work.zyx_from_lps(g)[LPS_TO_REF] for g in groups])
                centres = np.round(ref_points).astype(int)
                out = self._run(crop_patches(work.array, centres, self.patch), fc=True,
                                scales=tuple(cfg.feature_scales))
                position[s] = out["fc_position"] if position[s] is None else position[s] + out["fc_position"]
                for scale in cfg.feature_scales:
                    d = self.patch // SCALE_DIVISOR[scale]
                    r = max(1, d // 16)  # = int(4 * d / 64) of the reference for 64^3 patches: 2^3, 4^3, 8^3
                    centre = F.normalize(out[scale][:, :, d // 2 - r:d // 2 + r, d // 2 - r:d // 2 + r,
                                                    d // 2 - r:d // 2 + r], dim=1)
                    feats[s][scale] = centre if feats[s][scale] is None else feats[s][scale] + centre
        n = len(template_set.templates)
        result = SupportFeatures({s: p / n for s, p in position.items()}, feats, n, split)
        template_set.feature_cache[key] = result
        return result

    # --- query --------------------------------------------------------------------------------------------------
    def _query_reference(self, work: WorkVolume, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
        """Mean FC of patches jittered around the padded centre (non-air centres, bounded retries) and their mean
        position in mm."""
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

    def _mss(self, work: WorkVolume, points: np.ndarray, support_templates: dict[str, torch.Tensor]
             ) -> tuple[np.ndarray, np.ndarray]:
        """One multi-scale similarity pass; returns refined points and the per-point best mean cosine."""
        scales = tuple(self.config.feature_scales)
        shape = np.array(work.array.shape)
        size = (self.patch,) * 3
        clipped = np.clip(points, self.half, shape - self.half - 1).astype(int)
        out = self._run(crop_patches(work.array, clipped, self.patch), fc=False, scales=scales)
        n_points = len(points)
        score = torch.ones(n_points, *size)
        for scale in scales:
            query = F.normalize(out[scale], dim=1)  # [P, C, d, d, d]
            weight = support_templates[scale]  # [P, C, k, k, k]
            k = weight.shape[-1]
            sim = F.conv3d(query.reshape(1, -1, *query.shape[2:]), weight, padding=k // 2, groups=n_points)
            sim = F.interpolate(sim / k ** 3, size=size, mode="trilinear", align_corners=False)
            score += sim[0]
        flat = score.reshape(n_points, -1)
        best = flat.argmax(1).numpy()  # first maximum in C order, as np.where would give
        offsets = np.stack(np.unravel_index(best, size), axis=1) - (self.half - 1)  # argmax - 31 at 64^3
        peak = (flat.max(1).values.numpy() - 1.0) / max(1, len(scales))
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
        results = {}
        history = {}
        for index, s in enumerate(structures):
            check()
            report(0.4 + 0.6 * index / len(structures), f"localizing {s}")
            points = self._rdr(support.position[s], query_fc, query_pos_mm, work.spacing_mm)
            rdr_points = points.copy()
            steps = [points.copy()]
            for _ in range(cfg.recentre_iterations):  # move: re-embed at the estimate and jump again from there
                inside = np.clip(points, self.half, np.array(work.array.shape) - self.half - 1).astype(int)
                fc = self._run(crop_patches(work.array, inside, self.patch), fc=True, scales=())["fc_position"]
                shift_mm = (torch.tensor(DIS_RATIO_MM) * torch.tanh(support.position[s] - fc)).numpy()
                points = np.round(inside + shift_mm / work.spacing_mm)
                steps.append(points.copy())
            peak = np.full(len(points), np.nan)
            if cfg.feature_scales:
                points, peak = self._mss(work, points, support.templates[s])
            n_groups = support.split[s]
            groups = [points[6 * g:6 * g + 6] for g in range(n_groups)]
            lps_groups = [work.lps_from_zyx(g)[REF_TO_LPS] for g in groups]
            whole = _whole_from_slabs(lps_groups)
            confidence = float(np.clip(np.nanmean(peak) / support.n_support, 0, 1)) if cfg.feature_scales else 0.0
            # A jump that lands outside the unpadded working volume marks the structure absent, even if the MSS
            # clip pulled the point back inside.
            unpadded = np.all((rdr_points >= work.pad - 1) & (rdr_points <= np.array(work.array.shape) - work.pad), 1)
            box = make_structure_box(s, whole, query, "medlam", confidence,
                                     slab_points_lps=lps_groups if n_groups > 1 else None,
                                     details={"mode": cfg.mode, "mss_peak_cosine": np.round(peak, 4).tolist(),
                                              "rdr_inside": unpadded.tolist(),
                                              "recentre_steps_vox": [np.round(st).astype(int).tolist() for st in steps]})
            if not unpadded.all() and box.present:
                box = dataclasses.replace(box, present=False, box_ijk=None, box_lps_mm=None)
            results[s] = box
            history[s] = steps
        t3 = time.perf_counter()
        self.timings = {"support_s": t1 - t0, "query_preprocess_s": t2 - t1, "query_network_s": t3 - t2}
        report(1.0, "done")
        return results


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
