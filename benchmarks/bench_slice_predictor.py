"""Speed of the SlicePredictor against a plain fp32, batch-1, no-cache loop of the same model (not a test).

    python benchmarks/bench_slice_predictor.py                       # LiteMedSAM, 40 slices of a 512x512 phantom
    python benchmarks/bench_slice_predictor.py --model mobilesam
    python benchmarks/bench_slice_predictor.py --device cuda         # ms per slice on a GPU
    python benchmarks/bench_slice_predictor.py --device cuda --reference-device cpu   # GPU masks against CPU fp32
    python benchmarks/bench_slice_predictor.py --model sam_vit_h --random-init --slices 3   # timing only, no weights

Both run in one process on the same slices with the same box per slice (the box of the largest labelled organ on
that slice). The build machines are shared, so the two are interleaved block by block (``--block`` slices, 8 by
default): a burst of load from someone else hits both, and the ratio stays fair. The optimized predictor encodes
each block with one ``encode_range`` call, as the pipeline encodes a structure's slices before prompting them.
Prints both times per slice, their ratio, the worst per-slice Dice of the optimized masks against the fp32 loop's
masks, and the peak resident memory. With ``--escalate`` the predictor re-encodes in fp32 the slices whose masks
the reduced precision is expected to move; their count is printed, and their time is part of the optimized time.
Compilation (``--compile``) happens in the warm-up and is printed separately.
``--random-init`` builds both models with the same random weights (for models whose weights are not cached): the
timings hold, the masks and Dice mean nothing.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # benchmarks/ helpers (compute_bound)


def boxes_per_slice(labels: np.ndarray, skip_values: set[int] = frozenset()) -> list[list[int]]:
    """Box (x0, y0, x1, y1) of the largest labelled structure on each axial slice, structures in ``skip_values``
    only where nothing else is there; a central box on slices without any label."""
    boxes = []
    for plane in labels:
        values, counts = np.unique(plane[plane > 0], return_counts=True)
        keep = ~np.isin(values, list(skip_values))
        if keep.any():
            values, counts = values[keep], counts[keep]
        if len(values) == 0:
            h, w = plane.shape
            boxes.append([w // 4, h // 4, 3 * w // 4, 3 * h // 4])
            continue
        ys, xs = np.nonzero(plane == values[np.argmax(counts)])
        boxes.append([int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())])
    return boxes


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


class ReferenceLoop:
    """What the reference pipelines do: fp32 weights, one slice per encoder call, nothing cached."""

    def __init__(self, model, predictor):
        self.model = model.eval()
        self.predictor = predictor  # only for its window, transform and preprocessing (same inputs for both)
        self.device = next(model.parameters()).device

    def segment(self, index: int, box) -> tuple[np.ndarray, float]:
        from MedFoundationSegLib.segment.intensity import apply_window
        from MedFoundationSegLib.segment.preprocessing import slices_to_input

        p = self.predictor
        image = slices_to_input(apply_window(p.slice_image(index), p.window), p.transform, p.preprocessing)
        with torch.inference_mode():
            embedding = self.model.image_encoder(image.to(self.device))
            boxes = torch.as_tensor(p.transform.boxes_to_input(np.asarray([box])), dtype=torch.float32,
                                    device=self.device)
            sparse, dense = self.model.prompt_encoder(points=None, boxes=boxes, masks=None)
            low_res, iou = self.model.mask_decoder(image_embeddings=embedding,
                                                 image_pe=self.model.prompt_encoder.get_dense_pe(),
                                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                 multimask_output=False)
            return (p.transform.logits_to_slice(low_res) > 0)[0, 0].cpu().numpy(), float(iou[0, 0])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512, help="in-plane size of the phantom (size x size)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", help="optimized predictor's precision (auto, fp32, bf16, fp16)")
    parser.add_argument("--batch", type=int, default=None, help="encoder batch of the optimized predictor")
    parser.add_argument("--block", type=int, default=8,
                        help="slices per interleaved block (one encode_range call of the optimized predictor)")
    parser.add_argument("--compile", action="store_true", help="also torch.compile the optimized encoder")
    parser.add_argument("--worker-thread", action="store_true",
                        help="run the optimized predictor in one persistent background thread, as Slicer does")
    parser.add_argument("--no-optimize", action="store_true", help="optimized predictor without graph tweaks")
    parser.add_argument("--skip-reference", action="store_true", help="time only the optimized predictor")
    parser.add_argument("--reference-device", default=None,
                        help="device of the fp32 reference loop (default: the optimized predictor's); "
                             "'cpu' with --device cuda checks the GPU's masks against the CPU's")
    parser.add_argument("--escalate", action="store_true",
                        help="re-encode in fp32 the slices whose masks reduced precision is expected to move")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights (same in both models): timing only, for models without cached weights")
    args = parser.parse_args(argv)

    from MedFoundationSegLib.models.build import build_model
    from MedFoundationSegLib.runtime.retained_heap import available as heap_available
    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    from MedFoundationSegLib.segment.predictor import SlicePredictor

    t0 = time.perf_counter()
    n = args.slices
    depth = max(n, 16)  # the phantom needs 16 slices; fewer timed slices are taken from its middle
    first = (depth - n) // 2
    phantom = make_phantom(seed=0, shape_kji=(depth, args.size, args.size))
    # The volume is windowed for soft tissue, where bone is a flat white blob the models cannot delineate (fp32
    # itself gives Dice < 0.45 against the truth there), so the spine is boxed only on slices with nothing else.
    boxes = boxes_per_slice(phantom.labels.array, skip_values={phantom.label_ids.get("spine", -1)})
    print(f"phantom {phantom.image.array.shape} spacing {tuple(round(s, 2) for s in phantom.image.spacing_mm)} mm "
          f"made in {time.perf_counter() - t0:.1f} s; torch {torch.__version__}, {torch.get_num_threads()} threads")

    t0 = time.perf_counter()
    weights = None if args.random_init else "registry"
    torch.manual_seed(0)
    predictor = SlicePredictor(phantom.image, args.model, window="soft_tissue", device=args.device, weights=weights,
                               precision=args.precision, batch_size=args.batch, optimize=not args.no_optimize,
                               compile=args.compile, escalate=args.escalate)
    device = predictor.device
    runtime = predictor.runtime
    print(f"optimized: device {device}, precision {runtime.precision}, batch {runtime.batch_size}, "
          f"folded conv+BN {runtime.folded_bn}, channels_last {runtime.channels_last}, compile {runtime.compiled}, "
          f"escalation {predictor.escalate} (logit error scale {predictor.escalation_error_scale}), "
          f"stem bands {getattr(predictor.model.image_encoder, 'stem_bands', 0)}, retained heap {heap_available()}")
    reference = None
    if not args.skip_reference:
        torch.manual_seed(0)  # with --random-init: the same random weights as the optimized predictor's
        reference_device = torch.device(args.reference_device) if args.reference_device else device
        reference = ReferenceLoop(build_model(args.model, weights=weights, device=reference_device), predictor)
    print(f"models ready in {time.perf_counter() - t0:.1f} s")

    # Warm-up outside the timings (first-call allocations, oneDNN primitive creation, compilation).
    t0 = time.perf_counter()
    runtime.warm_up(predictor.transform.input_size)
    synchronize(device)
    warm_opt = time.perf_counter() - t0
    t0 = time.perf_counter()
    if reference is not None:
        reference.segment(first, boxes[first])
    warm_ref = time.perf_counter() - t0
    print(f"warm-up: optimized {warm_opt:.1f} s (of which compilation {runtime.compile_seconds:.1f} s), "
          f"reference {warm_ref:.1f} s")

    def optimized_block(start: int, stop: int) -> list[np.ndarray]:
        predictor.encode_range(start, stop - 1)
        masks = []
        for i in range(start, stop):
            before = predictor.slices_escalated
            masks.append(predictor.predict(i, boxes=boxes[i]).masks[0, 0])
            if predictor.slices_escalated > before:
                escalated.append(i)
        return masks

    # Slicer runs torch work in one persistent worker thread, whose C-heap arena behaves unlike the main thread's.
    worker = ThreadPoolExecutor(max_workers=1) if args.worker_thread else None
    chunk = max(1, args.block, runtime.batch_size)
    time_opt = time_ref = 0.0
    worst, worst_index, dices, escalated = 1.0, -1, [], []
    for start in range(first, first + n, chunk):
        stop = min(first + n, start + chunk)
        synchronize(device)
        t0 = time.perf_counter()
        masks = worker.submit(optimized_block, start, stop).result() if worker else optimized_block(start, stop)
        synchronize(device)
        time_opt += time.perf_counter() - t0
        if reference is None:
            continue
        t0 = time.perf_counter()
        ref_results = [reference.segment(i, boxes[i]) for i in range(start, stop)]
        ref_masks = [mask for mask, _ in ref_results]
        synchronize(reference.device)
        time_ref += time.perf_counter() - t0
        for i, (a, b) in enumerate(zip(masks, ref_masks), start):
            d = dice(a, b)
            dices.append(d)
            if d < 0.98:
                print(f"  slice {i}: Dice {d:.4f} (fp32 mask {int(b.sum())} px, fp32 predicted IoU "
                      f"{ref_results[i - start][1]:.2f})")
            if d < worst:
                worst, worst_index = d, i
        done = stop - first
        print(f"  slices {start:3d}-{stop - 1:3d}: optimized {1000 * time_opt / done:7.1f} ms/slice, "
              f"reference {1000 * time_ref / done:7.1f} ms/slice so far", flush=True)

    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nmodel {args.model}{' (random init, timing only)' if args.random_init else ''}, {n} slices of "
          f"{args.size}x{args.size}, device {device}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"optimized predictor: {1000 * time_opt / n:.1f} ms/slice "
          f"({'worker thread, ' if worker else ''}precision {runtime.precision}, batch {runtime.batch_size}, "
          f"compile {runtime.compiled}, "
          f"compilation {runtime.compile_seconds:.1f} s not included)")
    print(f"escalated to fp32: {predictor.slices_escalated} of {n} slices {escalated}")
    if reference is not None:
        print(f"plain fp32 batch-1 no-cache loop on {reference.device}: {1000 * time_ref / n:.1f} ms/slice")
        print(f"speed-up: {time_ref / time_opt:.2f}x")
        print(f"Dice optimized vs fp32 loop: worst {worst:.4f} (slice {worst_index}), mean {np.mean(dices):.4f}")
    print(f"peak RSS: {peak_rss_mib:.0f} MiB")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    else:
        print_compute_bound(args.model, predictor.transform.input_size, runtime.precision,
                            time_ref / n if reference is not None else None)
    return 0


def print_compute_bound(model: str, input_size: int, precision: str, reference_s_per_slice: float | None) -> None:
    """The encoder's matrix work per slice against this CPU's GEMM rate: the fastest any encoder call can be here,
    and so the largest speed-up over the reference loop that a given precision allows (encoder only: optimistic)."""
    from compute_bound import bound_line, gemm_gflops, gflop
    from MedFoundationSegLib.models.build import build_model

    encoder = build_model(model, device="meta").image_encoder
    work = gflop(lambda: encoder(torch.empty(1, 3, input_size, input_size, device="meta")))
    for dtype in [torch.float32] + ([torch.bfloat16] if precision == "bf16" else []):
        rate = gemm_gflops(dtype)
        line = bound_line(f"one {model} encoder call", work, rate, dtype)
        if reference_s_per_slice:
            line += f"; at most {reference_s_per_slice / (work / rate):.2f}x the reference loop's time per slice"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
