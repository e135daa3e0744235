"""Large structures and thin shells on CT phantoms, from their ground-truth 3D box: the body outline, the body with a
head-holder-like cradle inside its box, and the rib cage (a thin bone shell). Prints Dice, precision and recall per
structure for the default (LiteMedSAM, large boxes routed to MobileSAM), LiteMedSAM alone and MobileSAM alone.

    python benchmarks/bench_large_structures.py [--seeds 3 5] [--shape 40 256 256]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision
from MedFoundationSegLib.sampledata.large_structures import body_mask, rib_mask, with_holder
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.session import Session

CONFIGS = {"default (routed)": Options(refine="none"),
           "litemedsam only": Options(refine="none", large_box_model=""),
           "mobilesam only": Options(refine="none", model="mobilesam", large_box_model="")}


def box_of(mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])


def scores(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    overlap = float((mask & truth).sum())
    return 2 * overlap / max(mask.sum() + truth.sum(), 1), overlap / max(mask.sum(), 1), overlap / max(truth.sum(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 5])
    parser.add_argument("--shape", type=int, nargs=3, default=[40, 256, 256])
    args = parser.parse_args()
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, encoder precision "
          f"{resolve_precision('auto', torch.device('cpu'))}; box padding 5 mm (ordinary boxes)")
    rows = {}
    for seed in args.seeds:
        phantom = make_phantom(seed, shape_kji=tuple(args.shape))
        body = body_mask(phantom.image)
        holder_image, holder = with_holder(phantom.image, body)
        ribs = rib_mask(phantom.image, phantom.labels.array == phantom.label_ids["spine"])
        cases = [("body", phantom.image, body, box_of(body)), ("body + holder in box", holder_image, body,
                 box_of(body | holder)), ("rib cage (shell)", phantom.image, ribs, box_of(ribs))]
        session = Session()
        for config, options in CONFIGS.items():
            for name, image, truth, box in cases:
                start = time.perf_counter()
                result = session.segment_box(image, box, options)
                d, p, r = scores(result.mask_kji, truth)
                rows.setdefault((config, name), []).append((d, p, r))
                print(f"seed {seed} {config:17s} {name:21s} Dice {d:.3f} precision {p:.3f} recall {r:.3f} "
                      f"model {result.report['model']} ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\nmean over seeds", args.seeds)
    for (config, name), values in rows.items():
        d, p, r = np.mean(values, axis=0)
        print(f"{config:17s} {name:21s} Dice {d:.3f} precision {p:.3f} recall {r:.3f}")


if __name__ == "__main__":
    main()
