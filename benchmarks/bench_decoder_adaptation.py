"""Oracle study: can a few gradient steps on the mask decoder carry what a user signed on one slice to the other
slices of the structure (issue 19's "a few steps of adapting the mask decoder"), where the structure head's linear
read-out of the 64 x 64 embedding grid is too coarse?

Per structure, from the CVPR 2025 protocol box (middle-slice 2D box + z-range): every slice of the z-range prompted
with that 2D box by the model's own decoder ("box"), and by a copy of the decoder adapted on the middle slice's
ground truth ("mid"); from the second volume on, also by a copy adapted on the previous volume's truth of the same
structure ("prev"). For comparison, the structure head (segment/structure_head.py) fitted on the same truth
("head_mid", "head_prev"), alone inside the box. Truth stands in for what the user signed; no clicks are simulated.

    python benchmarks/bench_decoder_adaptation.py phantom|colin MODEL [STEPS] [LR] [PARAMS]

PARAMS: "all" (the whole mask decoder) or "output" (its upscaling and hypernetwork MLPs only).

    python benchmarks/bench_decoder_adaptation.py engine phantom|colin MODEL

The engine's own path (what was built from this study): each structure's truth in one volume signed
(``Session.learn_signed``: structure head, shape, atlases and the adapted decoder layers), then the next volume's
first segmentation from the protocol box (no padding, graph cut) with that head ("head+decoder"), with the same head
less its decoder layers ("head"), and with none ("none"); the seconds of the decoder's adaptation alone.
"""

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_interactive import protocol_box_ijk  # noqa: E402
from MedFoundationSegLib.segment import head_learning as hl  # noqa: E402
from MedFoundationSegLib.segment import structure_head as sh  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import AAL_FULL, PHANTOM_FULL, colin_cases, phantom_cases  # noqa: E402
from seg_metrics import dice  # noqa: E402


def slice_batch(predictor, slices, box_xyxy, truth=None):
    """(embeddings, sparse, dense, low-res targets) for ``slices`` prompted with one 2D box."""
    embeddings = torch.cat([predictor.embedding(k).float().reshape(1, *predictor.embedding(k).shape[-3:])
                            for k in slices])
    box = torch.as_tensor(predictor.transform.boxes_to_input(np.asarray([box_xyxy], float)), dtype=torch.float32)
    with torch.no_grad():
        sparse, dense = predictor.model.prompt_encoder(points=None, boxes=box, masks=None)
    targets = None
    if truth is not None:
        targets = torch.stack([torch.from_numpy(predictor.mask_to_prompt(truth[k]) > 0).float() for k in slices])
    return embeddings, sparse, dense, targets


def decode(predictor, decoder, embeddings, sparse, dense):
    pe = predictor.model.prompt_encoder.get_dense_pe()
    outs = []
    for e in embeddings:
        low, _ = decoder(image_embeddings=e[None], image_pe=pe, sparse_prompt_embeddings=sparse,
                         dense_prompt_embeddings=dense, multimask_output=False)
        outs.append(low[:, 0])
    return torch.cat(outs)


def adapt(predictor, batches, steps, lr, params):
    decoder = copy.deepcopy(predictor.model.mask_decoder).float()
    if params == "output":
        trained = list(decoder.output_upscaling.parameters()) + list(decoder.output_hypernetworks_mlps.parameters())
    else:
        trained = list(decoder.parameters())
    optimizer = torch.optim.Adam(trained, lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = 0.0
        for embeddings, sparse, dense, targets in batches:
            logits = decode(predictor, decoder, embeddings, sparse, dense)
            probability = torch.sigmoid(logits)
            overlap = (probability * targets).sum((1, 2))
            soft_dice = 1 - (2 * overlap + 1) / (probability.sum((1, 2)) + targets.sum((1, 2)) + 1)
            loss = loss + F.binary_cross_entropy_with_logits(logits, targets) + soft_dice.mean()
        loss.backward()
        optimizer.step()
    return decoder.eval()


def predict_volume(predictor, decoder, box, k0, k1, shape):
    mask = np.zeros(shape, bool)
    embeddings, sparse, dense, _ = slice_batch(predictor, range(k0, k1 + 1), box)
    with torch.no_grad():
        logits = predictor.transform.logits_to_slice(decode(predictor, decoder, embeddings, sparse, dense)[:, None])
    mask[k0:k1 + 1] = (logits[:, 0] > predictor.preprocessing.mask_threshold).numpy()
    return mask


def head_probability(predictor, head, box, k0, k1, truth):
    return hl.head_probability(predictor, head, box, range(k0, k1 + 1), truth.shape)


def engine_rows(which: str, model: str) -> None:
    import dataclasses

    from MedFoundationSegLib.core import geometry
    from MedFoundationSegLib.segment import decoder_adaptation

    cases = colin_cases(AAL_FULL[:12], 2)[1] if which == "colin" else phantom_cases(PHANTOM_FULL, 3, (48, 128, 128))[1]
    session, previous, rows = Session(), {}, []
    for case, make in cases:
        image, labels, ids = make()
        for name, label in ids.items():
            truth = labels.array == label
            if not truth.any():
                continue
            b = protocol_box_ijk(truth)
            if name in previous:
                head = previous[name]
                row = {arm: dice(session.segment_box(image, b, model=model, padding_mm=0.0, refine="graphcut",
                                                     prior_head=prior).mask_kji, truth)
                       for arm, prior in (("none", None), ("head", dataclasses.replace(head, decoder=None)),
                                          ("head+decoder", head))}
                rows.append(row)
                print(f"{case} {name:14s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
            predictor = session.predictor(image, model=model)
            start = time.perf_counter()
            decoder_adaptation.adapt(predictor, geometry.to_slices(truth, "axial"), (*b[0][:2], *b[1][:2]), int(b[0][2]),
                                    int(b[1][2]))
            seconds = time.perf_counter() - start
            previous[name] = session.learn_signed(image, truth, b, model=model, prior_head=previous.get(name),
                                                  adapt_decoder=True)
            print(f"{case} {name:14s} signed (decoder adapted in {seconds:.1f} s)", flush=True)
    for key in ("none", "head", "head+decoder"):
        print(f"mean {key}: {np.mean([r[key] for r in rows]):.3f} over {len(rows)}")


def main() -> None:
    if sys.argv[1] == "engine":
        return engine_rows(sys.argv[2], sys.argv[3])
    which, model = sys.argv[1], sys.argv[2]
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    lr = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4
    params = sys.argv[5] if len(sys.argv) > 5 else "all"
    if which == "colin":
        cases = colin_cases(AAL_FULL[:12], 2)[1]
    else:
        cases = phantom_cases(PHANTOM_FULL, 3, (48, 128, 128))[1]
    previous = {}
    rows = []
    for case, make in cases:
        image, labels, ids = make()
        predictor = Session().predictor(image, model=model)
        for name, label in ids.items():
            truth = labels.array == label
            if not truth.any():
                continue
            b = protocol_box_ijk(truth)
            box, k0, k1 = (b[0][0], b[0][1], b[1][0], b[1][1]), int(b[0][2]), int(b[1][2])
            predictor.encode_range(k0, k1)
            original = predictor.model.mask_decoder.float().eval()
            row = {"box": dice(predict_volume(predictor, original, box, k0, k1, truth.shape), truth)}
            start = time.perf_counter()
            mid = adapt(predictor, [slice_batch(predictor, [(k0 + k1) // 2], box, truth)], steps, lr, params)
            seconds = time.perf_counter() - start
            row["mid"] = dice(predict_volume(predictor, mid, box, k0, k1, truth.shape), truth)
            inbox = np.zeros_like(truth)
            inbox[k0:k1 + 1, box[1]:box[3] + 1, box[0]:box[2] + 1] = True
            head = sh.fit_head(*hl.box_samples(predictor, truth, box, [(k0 + k1) // 2])[:2], model)
            row["head_mid"] = dice((head_probability(predictor, head, box, k0, k1, truth) > 0.5) & inbox, truth)
            if name in previous:
                row["prev"] = dice(predict_volume(predictor, previous[name][0], box, k0, k1, truth.shape), truth)
                p_prev = head_probability(predictor, previous[name][1], box, k0, k1, truth)
                row["head_prev"] = dice((p_prev > 0.5) & inbox, truth)
            filled = [k for k in range(k0, k1 + 1) if truth[k].any()]
            chosen = filled[:: max(1, len(filled) // 6)]
            previous[name] = (adapt(predictor, [slice_batch(predictor, chosen, box, truth)], steps, lr, params),
                              sh.fit_head(*hl.box_samples(predictor, truth, box, list(range(k0, k1 + 1)))[:2], model))
            rows.append(row)
            print(f"{case} {name:14s} " + " ".join(f"{k} {v:.3f}" for k, v in row.items()) + f" ({seconds:.1f}s)",
                  flush=True)
    for key in ("box", "mid", "head_mid", "prev", "head_prev"):
        values = [r[key] for r in rows if key in r]
        paired = [r["box"] for r in rows if key in r]
        print(f"mean {key}: {np.mean(values):.3f} (box on the same {len(values)}: {np.mean(paired):.3f})")


if __name__ == "__main__":
    main()
