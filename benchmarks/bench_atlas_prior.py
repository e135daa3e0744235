"""Learning across a dataset, an oracle study: the first segmentation of each CT phantom with the other phantoms'
ground truth as the structure's earlier signed masks, kept as registered atlases (segment/atlas_prior.py) or as the
mean shape in the box (segment/shape_prior.py), at several prior gains, against no prior.

Per phantom and structure: the CVPR 2025 protocol box, segmented as the panel segments a drawn box
(bench_interactive.INITIALS), with a head holding only the shape (its weights are never used). Prints the Dice of each
arm per structure, then the mean per arm and gain.

    python benchmarks/bench_atlas_prior.py [--model litemedsam] [--phantoms 6] [--gains 1 2 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_interactive import INITIALS, protocol_box_ijk  # noqa: E402
from MedFoundationSegLib.runtime.encoder_runtime import resolve_precision  # noqa: E402
from MedFoundationSegLib.sampledata.phantoms import make_phantom  # noqa: E402
from MedFoundationSegLib.segment import atlas_prior, shape_prior  # noqa: E402
from MedFoundationSegLib.segment.structure_head import StructureHead  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import PHANTOM_FULL, machine_description  # noqa: E402
from seg_metrics import dice  # noqa: E402


def shape_heads(model: str, others, structure: str) -> dict[str, StructureHead]:
    """A head holding the mean shape of ``others``' truths, and one holding them also as atlases."""
    shape = atlases = None
    for count, phantom in enumerate(others):
        mask = phantom.mask(structure)
        box_ijk = protocol_box_ijk(mask)
        shape = shape_prior.updated(shape, count, mask, box_ijk)
        image = phantom.image.array
        atlases = atlas_prior.appended(atlases, atlas_prior.image_grid(image, box_ijk),
                                       atlas_prior.mask_grid(mask, box_ijk), atlas_prior.volume_digest(image))
    empty = dict(model=model, weights=np.zeros(4, np.float32), bias=0.0, mean=np.zeros(4, np.float32),
                 scale=np.ones(4, np.float32), volumes=0, cells=0, shape=shape, shape_volumes=len(others))
    return {"mean shape": StructureHead(**empty),
            "atlases": StructureHead(**empty, atlas_images=atlases[0], atlas_masks=atlases[1],
                                     atlas_sources=atlases[2])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--phantoms", type=int, default=6, help="phantoms 101, 102, ...; each is segmented with the "
                                                                 "others as its earlier volumes")
    parser.add_argument("--gains", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    parser.add_argument("--structures", nargs="+", default=list(PHANTOM_FULL))
    args = parser.parse_args()
    print(f"{machine_description()}; {torch.get_num_threads()} torch threads, encoder precision "
          f"{resolve_precision('auto', torch.device('cpu'))}; model {args.model}", flush=True)
    phantoms = [make_phantom(101 + n, (48, 128, 128)) for n in range(args.phantoms)]
    dices: dict[tuple[str, float], list[float]] = {}
    for n, phantom in enumerate(phantoms):
        session = Session(max_predictors=1)
        for structure in args.structures:
            truth = phantom.mask(structure)
            box_ijk = protocol_box_ijk(truth)
            heads = shape_heads(args.model, phantoms[:n] + phantoms[n + 1:], structure)
            arms = [("none", 0.0, None)] + [(arm, gain, head) for arm, head in heads.items() for gain in args.gains]
            for arm, gain, head in arms:
                shape_prior.PRIOR_GAIN = gain  # the shape's weight in the blend (both kinds), for this run
                result = session.segment_box(phantom.image, box_ijk, model=args.model, padding_mm=0.0,
                                             refine="graphcut", prior_head=head, **INITIALS["panel"])
                dices.setdefault((arm, gain), []).append(dice(result.mask_kji, truth))
            print(f"phantom{101 + n} {structure:<13} " +
                  " ".join(f"{arm} {gain:g}: {values[-1]:.3f}" for (arm, gain), values in dices.items()), flush=True)
    print()
    for (arm, gain), values in dices.items():
        print(f"{arm:<11} gain {gain:g}: mean first Dice {np.mean(values):.4f} over {len(values)} structures")


if __name__ == "__main__":
    main()
