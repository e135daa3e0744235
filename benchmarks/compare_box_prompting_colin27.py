"""Box prompting on MR brain structures: box_guided with/without box padding and margins against the peer procedure.

    python benchmarks/compare_box_prompting_colin27.py                      # 6 left deep-grey / temporal structures
    python benchmarks/compare_box_prompting_colin27.py Putamen_L Thalamus_R

Colin27 T1 + AAL (benchmarks/public_data.py), ground-truth 3D boxes, LiteMedSAM, no refinement; every procedure runs
on the same cached slice embeddings, so only the prompting differs. Prints Dice per structure and the means.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from seg_metrics import dice  # noqa: E402

DEFAULT_STRUCTURES = ("Caudate_L", "Putamen_L", "Thalamus_L", "Hippocampus_L", "Pallidum_L", "Amygdala_L")
# name -> box_guided keyword arguments (pad_mm widens the 3D box's rectangle on the middle slice; the margin grows
# each previous mask's box: max(margin_px, margin_fraction x its larger side))
VARIANTS = {
    "guided, pad 5 mm (localized-box default)": dict(pad_mm=5.0, margin_px=5.0, margin_fraction=0.1),
    "guided, pad 0": dict(pad_mm=0.0, margin_px=5.0, margin_fraction=0.1),
    "guided, pad 5 mm capped at 10% of the smaller side": dict(pad_mm="capped", margin_px=5.0, margin_fraction=0.1),
    "guided, pad 3 mm, margin 2.5 px": dict(pad_mm=3.0, margin_px=2.5, margin_fraction=0.0),
    "guided, pad 0, margin 2.5 px": dict(pad_mm=0.0, margin_px=2.5, margin_fraction=0.0),
}



def main(argv=None) -> int:
    from MedFoundationSegLib.segment import propagate, reference
    from MedFoundationSegLib.workflow.session import Session
    from public_data import load_colin27

    structures = (argv if argv is not None else sys.argv[1:]) or list(DEFAULT_STRUCTURES)
    image, labels, names = load_colin27()
    ids = {name: value for value, name in names.items()}
    unknown = [s for s in structures if s not in ids]
    if unknown:
        raise SystemExit(f"unknown AAL structure(s) {unknown}")
    segmenter = Session().segmenter(image, model="litemedsam", device="auto", window="auto", axis="axial",
                                               cache_mb=4096)
    spacing_ji = (float(image.spacing_mm[1]), float(image.spacing_mm[0]))
    scores = {name: [] for name in [*VARIANTS, "peer (LiteMedSAM 3D, unpadded box)"]}
    print(f"Colin27 T1 {image.shape_kji} (z,y,x), spacing {image.spacing_mm} mm; Dice against AAL, GT boxes")
    for structure in structures:
        truth = labels.array == ids[structure]
        z, y, x = np.nonzero(truth)
        box_kji = ((z.min(), z.max()), (y.min(), y.max()), (x.min(), x.max()))
        line = [f"{structure:14s}"]
        for name, kwargs in VARIANTS.items():
            if kwargs["pad_mm"] == "capped":  # the pipeline's rule for localized boxes (padding_fraction=0.1)
                side_mm = min((x.max() - x.min() + 1) * image.spacing_mm[0], (y.max() - y.min() + 1) * image.spacing_mm[1])
                kwargs = dict(kwargs, pad_mm=min(5.0, 0.1 * side_mm))
            result = propagate.box_guided(segmenter, truth.shape, box_kji, spacing_mm=spacing_ji, **kwargs)
            scores[name].append(dice(result.mask, truth))
            line.append(f"{scores[name][-1]:.3f}")
        peer = reference.reference_litemedsam(segmenter, truth.shape, (x.min(), y.min(), z.min(), x.max(), y.max(),
                                                                        z.max()))
        scores["peer (LiteMedSAM 3D, unpadded box)"].append(dice(peer.mask, truth))
        line.append(f"{scores['peer (LiteMedSAM 3D, unpadded box)'][-1]:.3f}")
        print("  ".join(line), flush=True)
    print("\ncolumns, and mean Dice:")
    for name, values in scores.items():
        print(f"  {name:44s} {np.mean(values):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
