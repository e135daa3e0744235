"""Scratch: each phantom's first masks (the panel's drawn box) and the carried shape of the 5 phantoms before it in
the pool (their truths as atlases), written for the fusion-rule probes (probe_thirtysecond_fusion_rules*.py,
probe_thirtysecond_fusion_beyond_box.py), which import the pieces they share from here.

    python probe_thirtysecond_fusion.py MODEL
"""
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_interactive import INITIALS, protocol_box_ijk
from MedFoundationSegLib.segment import atlas_prior
from MedFoundationSegLib.workflow.session import Session
from run_benchmarks import PHANTOM_FULL, phantom_cases
from seg_metrics import dice


def first_masks_path(model: str) -> Path:
    return Path(tempfile.gettempdir()) / f"probe_thirtysecond_fusion_{model}.pkl"


def phantom_truths() -> list[tuple[str, object, dict]]:
    """The pool's ten phantoms as (case, image, {structure: truth mask})."""
    data = []
    for case, make in phantom_cases(tuple(PHANTOM_FULL), 10, (48, 128, 128))[1]:
        image, labels, ids = make()
        data.append((case, image, {n: labels.array == ids[n] for n in PHANTOM_FULL}))
    return data


def carried_from(data, n: int, name: str, count: int, box, image) -> np.ndarray:
    """The carried shape (atlas grid) of ``name`` from the ``count`` phantoms before phantom ``n`` of ``data`` in the
    pool, their truths as atlases, registered onto ``image`` around ``box``."""
    others = [data[(n - m) % len(data)] for m in range(1, count + 1)]
    images = np.array([atlas_prior.image_grid(o[1].array, protocol_box_ijk(o[2][name])) for o in others])
    masks = np.array([atlas_prior.mask_grid(o[2][name], protocol_box_ijk(o[2][name])) for o in others])
    return atlas_prior.carried_shape(images, masks, image.array, box, tuple(image.spacing_mm[::-1]))


def logit(p):
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def main(model: str) -> None:
    data = phantom_truths()
    out = []
    for n, (case, image, truths) in enumerate(data):
        session = Session(max_predictors=2)
        for name in PHANTOM_FULL:
            t = truths[name]
            box = protocol_box_ijk(t)
            shown = session.segment_box(image, box, model=model, padding_mm=0.0, refine="graphcut", **INITIALS["panel"])
            grid = carried_from(data, n, name, 5, box, image)
            out.append(dict(case=case, name=name, box=box, prob=shown.probability_kji.astype(np.float16),
                            mask=shown.mask_kji, grid=grid))
            print(case, name, f"model {dice(shown.mask_kji, t):.3f}", flush=True)
    pickle.dump(out, open(first_masks_path(model), "wb"))


if __name__ == "__main__":
    main(sys.argv[1])
