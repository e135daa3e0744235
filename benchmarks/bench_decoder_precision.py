"""The mask decoder in bf16 against fp32 on the same cached embeddings: seconds per decoded slice and mask agreement.

A correction walks slice by slice and asks the mask decoder once per slice it reaches, so the decoder sets how long a
click takes once the slices are encoded. On a CPU that does bf16 natively SlicePredictor runs the decoder in bf16
beside the bf16 encoder (``decoder_bf16``); this prints what that buys and what it changes. Per model: the organs of
one CT phantom, each slice decoded with its truth box in fp32 and in bf16 (interleaved, ``--repeats`` times); the
ratio is fp32 time / bf16 time in the same process.

``--compile``: instead, the compiled decoder (runtime/compiled_decoder.py, in the predictor's own precision) against
the eager one on the same slices, after waiting for the background compilation (its seconds are printed).

    python benchmarks/bench_decoder_precision.py [--models litemedsam mobilesam] [--repeats 3] [--threads 2] [--compile]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from MedFoundationSegLib.sampledata.phantoms import make_phantom  # noqa: E402
from MedFoundationSegLib.workflow.session import Session  # noqa: E402
from run_benchmarks import machine_description  # noqa: E402
from seg_metrics import dice  # noqa: E402


def organ_prompts(phantom, step: int = 2) -> list[tuple[int, tuple[int, int, int, int]]]:
    """(slice, truth box) for every ``step``-th slice of every organ (slices where the organ spans 2+ pixels)."""
    prompts = []
    for label in phantom.label_ids.values():
        truth = phantom.labels.array == label
        for k in np.flatnonzero(truth.any(axis=(1, 2)))[::step]:
            rows, cols = np.nonzero(truth[k])
            if cols.max() > cols.min() and rows.max() > rows.min():  # a box the predictor takes
                prompts.append((int(k), (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))))
    return prompts


def decode_all(predictor, prompts, bf16: bool) -> tuple[list[np.ndarray], float]:
    predictor.decoder_bf16 = bf16
    start = time.perf_counter()
    masks = [predictor.predict(k, box).masks[0, 0] for k, box in prompts]
    return masks, (time.perf_counter() - start) / len(prompts)


def compare_compiled(predictor, prompts, model: str, repeats: int) -> None:
    """The compiled decoder against the eager one, interleaved, on the same cached embeddings."""
    start = time.perf_counter()
    predictor.predict(*prompts[0])  # starts the background compilation
    state = predictor.decoder.wait(900)
    waited = time.perf_counter() - start
    if state != "ready":
        print(f"{model}: the decoder did not compile ({state})")
        return
    seconds, masks = {True: [], False: []}, {}
    for _ in range(repeats):
        for compiled in (False, True):
            predictor.decoder.use_compiled = compiled
            masks[compiled], per_slice = decode_all(predictor, prompts, predictor.decoder_bf16)
            seconds[compiled].append(per_slice)
    agreement = [dice(a, b) for a, b in zip(masks[False], masks[True]) if a.any() or b.any()]
    eager_s, compiled_s = np.median(seconds[False]), np.median(seconds[True])
    precision = "bf16" if predictor.decoder_bf16 else "fp32"
    print(f"{model:<11} decoder ({precision}) s/slice (median of {repeats}): eager {eager_s:.4f}, compiled "
          f"{compiled_s:.4f}, ratio {eager_s / compiled_s:.2f}x; Dice compiled vs eager mask: mean "
          f"{np.mean(agreement):.4f}, min {np.min(agreement):.4f}; compilation took {predictor.decoder.seconds:.1f} s "
          f"(ready {waited:.1f} s after the first decode)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["litemedsam", "mobilesam"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="compiled against eager decoder instead")
    args = parser.parse_args()
    os.environ["MEDFOUNDATIONSEG_COMPILE_DECODER"] = "1" if args.compile else "0"
    torch.set_num_threads(args.threads)
    phantom = make_phantom(101, (48, 128, 128))
    prompts = organ_prompts(phantom)
    print(f"{machine_description()}; {torch.get_num_threads()} torch threads; phantom 101, {len(prompts)} organ "
          "slices with their truth boxes", flush=True)
    for model in args.models:
        predictor = Session().predictor(phantom.image, model=model)
        if args.compile:
            predictor.encode_slices(sorted({k for k, _ in prompts}))
            compare_compiled(predictor, prompts, model, args.repeats)
            continue
        if not predictor.decoder_bf16:
            print(f"{model}: the encoder runs in {predictor.runtime.precision} here, so the decoder stays fp32")
            continue
        predictor.encode_slices(sorted({k for k, _ in prompts}))
        decode_all(predictor, prompts[:4], True)  # warm-up of both paths
        decode_all(predictor, prompts[:4], False)
        seconds, masks = {True: [], False: []}, {}
        for _ in range(args.repeats):
            for bf16 in (False, True):
                masks[bf16], per_slice = decode_all(predictor, prompts, bf16)
                seconds[bf16].append(per_slice)
        agreement = [dice(a, b) for a, b in zip(masks[False], masks[True]) if a.any() or b.any()]
        fp32_s, bf16_s = np.median(seconds[False]), np.median(seconds[True])
        print(f"{model:<11} decoder s/slice (median of {args.repeats}): fp32 {fp32_s:.4f}, bf16 {bf16_s:.4f}, "
              f"ratio {fp32_s / bf16_s:.2f}x; Dice bf16 vs fp32 mask: mean {np.mean(agreement):.4f}, "
              f"min {np.min(agreement):.4f}, identical {np.mean([a == 1.0 for a in agreement]):.0%}", flush=True)


if __name__ == "__main__":
    main()
