"""Pipeline benchmarks (issue: 3D annotation pipeline). Prints figures; not part of the test suite.

    python benchmarks/bench_pipeline.py accuracy [--queries 10]   # phantoms, from a template's extreme points only
    python benchmarks/bench_pipeline.py speed [--slices 60]        # ours vs the peer LiteMedSAM 3D procedure
    python benchmarks/bench_pipeline.py memory [--shape 600,512,512]

accuracy: one template phantom with the 6 extreme points of each organ; N other phantoms are localized (registration
unless MedLAM weights are present), segmented box-per-slice with LiteMedSAM, refined; Dice raw vs refined per organ,
and seed-slice propagation from the organ's largest slice against the 3D-box result.
speed: one organ over a fixed number of slices, end to end from its 3D box: our predictor (embedding cache, optimized
encoder) in each of --modes (default: box_guided, the pipeline's default, and every_k) against the peer reference
procedure (plain fp32 batch-1 no-cache predictor, middle slice and previous-mask boxes) in the same process; Dice of
each against the truth.
memory: a CT-sized volume annotated from its box in a child process that only reads it; its peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

LARGE_ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def truth_box(labels, label) -> np.ndarray:
    k, j, i = np.nonzero(labels == label)
    return np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])


def accuracy(args) -> None:
    from MedFoundationSegLib.localize.engines import choose_localizer, localize
    from MedFoundationSegLib.localize.templates import TemplateSet
    from MedFoundationSegLib.sampledata.phantoms import make_phantom, template_from_phantom
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLib.workflow.session import Session

    shape = tuple(int(v) for v in args.shape.split(","))
    template = template_from_phantom("template", make_phantom(100, shape), list(LARGE_ORGANS))
    templates = TemplateSet([template])
    session = Session()
    engine, reason = choose_localizer("auto")
    args.mode = args.mode or Options().mode
    print(f"accuracy: {args.queries} query phantoms {shape}, localizer {engine} ({reason}), model litemedsam, "
          f"mode {args.mode}")
    rows = {organ: {"raw": [], "refined": [], "seed": [], "truth_box": []} for organ in LARGE_ORGANS}
    started = time.perf_counter()
    for q in range(args.queries):
        query = make_phantom(101 + q, shape)
        boxes = localize(templates, query.image, engine, structures=list(LARGE_ORGANS))
        line = [f"query {101 + q}:"]
        for organ in LARGE_ORGANS:
            truth = query.labels.array == query.label_ids[organ]
            box = boxes[organ]
            if not box.present:
                for key in ("raw", "refined"):
                    rows[organ][key].append(0.0)
                line.append(f"{organ} absent")
                continue
            raw = session.segment_box(query.image, box.box_ijk, padding_mm=3.0, refine="none", mode=args.mode)
            refined = session.refine_result(query.image, raw, method="graphcut", box_ijk=box.box_ijk)
            gt_box = session.segment_box(query.image, truth_box(query.labels.array, query.label_ids[organ]),
                                         padding_mm=3.0, refine="none", mode=args.mode)
            middle = int(np.argmax(truth.sum(axis=(1, 2))))
            seed = np.zeros_like(truth)
            seed[middle] = truth[middle]
            propagated = session.propagate(query.image, seed, slice_index=middle)
            scores = {"raw": dice(raw.mask_kji, truth), "refined": dice(refined.mask_kji, truth),
                      "seed": dice(propagated.mask_kji, truth), "truth_box": dice(gt_box.mask_kji, truth)}
            for key, value in scores.items():
                rows[organ][key].append(value)
            line.append(f"{organ} raw {scores['raw']:.3f} refined {scores['refined']:.3f}")
        session = Session()  # one query's embeddings are not reused by the next
        print("  " + "  ".join(line), flush=True)
    print(f"\n{'organ':<14}{'localized raw':>14}{'localized+refine':>18}{'GT box (raw)':>14}{'seed slice':>12}")
    for organ, values in rows.items():
        print(f"{organ:<14}{np.mean(values['raw']):14.3f}{np.mean(values['refined']):18.3f}"
              f"{np.mean(values['truth_box']):14.3f}{np.mean(values['seed']):12.3f}")
    mean_raw = np.mean([np.mean(v["raw"]) for v in rows.values()])
    mean_refined = np.mean([np.mean(v["refined"]) for v in rows.values()])
    mean_box = np.mean([np.mean(v["truth_box"]) for v in rows.values()])
    mean_seed = np.mean([np.mean(v["seed"]) for v in rows.values()])
    print(f"\nmean Dice on large organs, from the template's extreme points: raw {mean_raw:.3f}, refined "
          f"{mean_refined:.3f} (target >= 0.85; refinement {'improves' if mean_refined > mean_raw else 'does not improve'})")
    print(f"seed-slice propagation {mean_seed:.3f} vs 3D-box {mean_box:.3f}: gap {mean_box - mean_seed:+.3f} "
          f"(target <= 0.03)")
    print(f"total {time.perf_counter() - started:.0f} s")


def warm_up_libraries() -> None:
    """Run the lazily imported parts of the pipeline once on a toy mask (imports and first-call set-up)."""
    from MedFoundationSegLib.segment.interpolation import interpolate_slices

    toy = np.zeros((3, 8, 8), bool)
    toy[0, 2:6, 2:6] = toy[2, 3:5, 3:5] = True
    interpolate_slices(toy)
    import maxflow  # noqa: F401  (graph-cut refinement)


def speed(args) -> None:
    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    from MedFoundationSegLib.segment import reference
    from MedFoundationSegLib.segment.predictor import SlicePredictor
    from MedFoundationSegLib.segment.segmenter import PredictorSegmenter
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLib.workflow.session import Session

    phantom = make_phantom(args.seed, (args.slices + 40, 256, 256))
    label = phantom.label_ids[args.organ]
    box = truth_box(phantom.labels.array, label)
    k_mid = (box[0, 2] + box[1, 2]) // 2
    box[0, 2], box[1, 2] = max(0, k_mid - args.slices // 2), max(0, k_mid - args.slices // 2) + args.slices - 1
    truth = phantom.labels.array == label
    inside = np.zeros_like(truth)
    inside[box[0, 2]:box[1, 2] + 1] = True
    truth &= inside
    n = box[1, 2] - box[0, 2] + 1
    print(f"speed: {args.organ} over {n} slices of a {phantom.image.array.shape[2]}x{phantom.image.array.shape[1]} "
          f"phantom, LiteMedSAM on {args.device}")

    # Libraries load once per process (in Slicer: once per session), not once per structure: ITK's contour
    # interpolator alone takes ~9 s to import here. Load them before either procedure is timed, and say how long.
    start = time.perf_counter()
    warm_up_libraries()
    print(f"one-time library loading (ITK interpolation, max-flow), excluded from both timings: "
          f"{time.perf_counter() - start:.1f} s", flush=True)

    start = time.perf_counter()
    reference_predictor = SlicePredictor(phantom.image, "litemedsam", device=args.device, precision="fp32",
                                         optimize=False, cache_bytes=0, batch_size=1)
    (i0, j0, k0), (i1, j1, k1) = box
    reference = reference.reference_litemedsam(PredictorSegmenter(reference_predictor), truth.shape,
                                               (i0, j0, k0, i1, j1, k1))
    reference_s = time.perf_counter() - start

    d_ref = dice(reference.mask, truth)
    print(f"peer reference procedure: {reference_s:7.1f} s ({1000 * reference_s / n:6.0f} ms/slice), "
          f"encoder calls {reference_predictor.slices_encoded}, Dice {d_ref:.3f}", flush=True)
    for mode in args.modes.split(","):  # each in a fresh session: nothing encoded by another run is reused
        start = time.perf_counter()
        ours = Session().segment_box(phantom.image, box, padding_mm=3.0, refine=args.refine,
                                              device=args.device, mode=mode)
        ours_s = time.perf_counter() - start
        d_ours = dice(ours.mask_kji, truth)
        default = " (the default)" if mode == Options().mode else ""
        print(f"ours ({mode}{default}, {args.refine}): {ours_s:7.1f} s ({1000 * ours_s / n:6.0f} ms/slice), "
              f"encoder calls {ours.report['slices_encoded']}, Dice {d_ours:.3f}; speed-up "
              f"{reference_s / ours_s:.2f}x (target >= 4x), Dice difference {d_ours - d_ref:+.3f} (target >= -0.02)",
              flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


def memory(args) -> None:
    """Annotation of a CT-sized volume in a child process that only reads it, so its peak RSS is the annotation's
    (the phantom is generated and written to disk by another child first)."""
    import tempfile

    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory(prefix="mfs-memory-") as tmp:
        make = f"""
import json, time, numpy as np
from MedFoundationSegLib.sampledata.phantoms import make_phantom
from MedFoundationSegLib.core.volume import write_volume
t = time.perf_counter()
ph = make_phantom(5, {shape})
write_volume(ph.image, "{tmp}/image.nrrd", compress=False)
write_volume(ph.labels.with_array((ph.labels.array == ph.label_ids["liver"]).astype(np.uint8)), "{tmp}/liver.nrrd")
print(json.dumps({{"phantom_s": round(time.perf_counter() - t, 1)}}))
"""
        annotate = f"""
import json, resource, time, numpy as np
from MedFoundationSegLib.localize.engines import choose_localizer, localize
from MedFoundationSegLib.workflow.options import Options
from MedFoundationSegLib.workflow.session import Session
from MedFoundationSegLib.core.volume import read_volume
t = time.perf_counter()
image = read_volume("{tmp}/image.nrrd")
truth = read_volume("{tmp}/liver.nrrd").array > 0
k, j, i = np.nonzero(truth)
box = np.array([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])
del k, j, i
result = Session().segment_box(image, box, padding_mm=3.0, refine="graphcut")
d = 2 * (result.mask_kji & truth).sum() / (result.mask_kji.sum() + truth.sum())
print(json.dumps({{"shape": list(image.array.shape), "annotate_s": round(time.perf_counter() - t, 1),
                   "slices": int(box[1, 2] - box[0, 2] + 1), "dice": round(float(d), 3),
                   "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}}))
"""
        figures = {}
        for code in (make, annotate):
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if result.returncode != 0:
                print(result.stderr[-3000:], file=sys.stderr)
                raise SystemExit(result.returncode)
            figures.update(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"memory: {figures}")
    print(f"peak RSS of the annotation process {figures['peak_rss_mb']} MB (target <= 4096 MB; reading the volume, "
          f"encoding {figures['slices']} slices, segmenting and refining)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("--queries", type=int, default=10)
    a.add_argument("--shape", default="64,192,192")
    a.add_argument("--mode", default=None, help="segmentation mode (default: the pipeline's)")
    s = sub.add_parser("speed")
    s.add_argument("--slices", type=int, default=60)
    s.add_argument("--organ", default="liver")
    s.add_argument("--seed", type=int, default=3)
    s.add_argument("--device", default="auto")
    s.add_argument("--refine", default="graphcut")
    s.add_argument("--modes", default="box_guided,every_k", help="our segmentation modes to time against the peer")
    m = sub.add_parser("memory")
    m.add_argument("--shape", default="600,512,512")
    args = parser.parse_args()
    {"accuracy": accuracy, "speed": speed, "memory": memory}[args.what](args)


if __name__ == "__main__":
    main()
