"""``medfoundationseg learn-heads``: structure heads from the label volumes of a template set.

Why: the templates' labels are masks someone signed. Learning each structure's head from them (segment/head_learning.py)
means the first query volume of a dataset already starts from what the templates show, in the batch (``--heads``) and
in the Slicer panel (its "Heads folder"). Heads already in the folder are the prior: templates add to what corrected
volumes taught, they do not replace it.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "learn-heads", help="learn structure heads from the label volumes of a template set",
        description="For every structure of the template set, fit its structure head on each template's label mask "
                    "(within the mask's box), with --adapt-decoder also adapt the model's decoder output layers to "
                    "it, and store it in FOLDER/heads/<structure>.<model>.npz, starting from the head already there. "
                    "Templates without a label volume are skipped with a note.")
    parser.add_argument("--templates", required=True, help="template set file (.yaml/.json)")
    parser.add_argument("--heads", help="heads folder (default: the template set file's folder)")
    parser.add_argument("--model", default="litemedsam", help="box-prompt model whose embeddings the heads read")
    parser.add_argument("--structures", nargs="+", help="structure names (default: every labelled structure)")
    parser.add_argument("--device", default="auto", help="torch device (auto, cpu, cuda)")
    parser.add_argument("--adapt-decoder", action="store_true",
                        help="also adapt the model's decoder output layers to each structure (a few seconds each); "
                             "measured: better with LiteMedSAM on CT and MobileSAM on brain MR, worse with the "
                             "other two pairs (docs/benchmarks.md)")
    parser.set_defaults(func=run_learn_heads)


def run_learn_heads(args: argparse.Namespace) -> int:
    from MedFoundationSegLib.io.head_store import HeadStore
    from MedFoundationSegLib.localize.templates import TemplateSet
    from MedFoundationSegLib.segment.graphcut import mask_box_kji
    from MedFoundationSegLib.segment.structure_head import StructureHead
    from MedFoundationSegLib.workflow.session import Session

    templates = TemplateSet.load(args.templates)
    store = HeadStore(args.heads or Path(args.templates).resolve().parent)
    session = Session(max_predictors=1)
    learned = 0
    for template in templates.templates:
        if template.labels is None:
            print(f"{template.name}: no label volume, skipped")
            continue
        for name in args.structures or sorted(template.label_ids):
            if name not in template.label_ids:
                print(f"{template.name}: no label for {name}, skipped")
                continue
            mask = template.mask(name)
            (k0, k1), (j0, j1), (i0, i1) = mask_box_kji(mask)  # template.mask refuses an empty structure
            box_ijk = [[i0, j0, k0], [i1, j1, k1]]
            stored = store.load(name, args.model)
            prior = StructureHead.from_arrays(stored) if stored is not None else None
            head = session.learn_signed(template.image, mask, box_ijk, model=args.model, device=args.device,
                                        prior_head=prior, adapt_decoder=args.adapt_decoder)
            path = store.save(name, args.model, head.to_arrays())
            learned += 1
            weights = f"head from {head.volumes} volume(s)" if head.volumes else \
                f"too fine for a head on {args.model}'s embedding grid"
            atlases = 0 if head.atlas_images is None else len(head.atlas_images)
            print(f"{template.name}: {name} -> {path} ({weights}, shape from {head.shape_volumes}, "
                  f"{atlases} atlas(es), {'decoder layers adapted' if head.decoder else 'no decoder layers'})")
    print(f"learn-heads: {learned} head(s) stored in {store.folder}")
    return 0
