"""Which TinyViT stages can run in bf16 (or int8) without moving the masks? A per-stage precision sweep (not a test).

    python benchmarks/bench_encoder_stages.py                 # LiteMedSAM, 40 slices of a 512x512 phantom
    python benchmarks/bench_encoder_stages.py --slices 8
    python benchmarks/bench_encoder_stages.py --int8          # dynamic int8 linear layers instead of bf16

For each configuration some encoder stages run in bf16 (weights and activations, cast back to fp32 at the stage's
output) and the others in fp32. With ``--int8`` the chosen stages' linear layers are dynamically quantised instead
(int8 weights, activations quantised per call: PyTorch's ``quantize_dynamic``, the int8 path that needs no
calibration; int8 is the one reduced precision that an AVX2 CPU multiplies faster than fp32). Every slice is decoded
in fp32 from that embedding with the benchmark's box and compared with the plain fp32 encoder's mask. Prints ms per
slice (this process, batch 1, channels-last, BN folded, retained heap), the worst and mean Dice, and how many slices
fall below 0.98. Same slices and boxes as bench_slice_predictor.py.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_slice_predictor import boxes_per_slice, dice  # noqa: E402

STAGES = ("patch_embed", "layers.0", "layers.1", "layers.2", "layers.3", "neck")


def mixed_encoder(encoder: torch.nn.Module, bf16_stages) -> torch.nn.Module:
    """A copy of ``encoder`` (BN folded, channels-last) whose ``bf16_stages`` compute in bf16."""
    from MedFoundationSegLib.runtime.encoder_runtime import fold_batchnorm

    encoder = copy.deepcopy(encoder)
    fold_batchnorm(encoder)

    def to_bf16(_module, args, kwargs):
        return tuple(a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args), kwargs

    for name in bf16_stages:
        stage = encoder.get_submodule(name).to(torch.bfloat16)
        stage.register_forward_pre_hook(to_bf16, with_kwargs=True)
        stage.register_forward_hook(lambda _m, _args, out: out.float())
    return encoder.to(memory_format=torch.channels_last)


def int8_encoder(encoder: torch.nn.Module, int8_stages) -> torch.nn.Module:
    """A copy of ``encoder`` (BN folded, channels-last) whose ``int8_stages`` run their linear layers in int8."""
    from MedFoundationSegLib.runtime.encoder_runtime import fold_batchnorm

    encoder = copy.deepcopy(encoder)
    fold_batchnorm(encoder)
    for name in int8_stages:
        parent, _, leaf = name.rpartition(".")
        owner = encoder.get_submodule(parent) if parent else encoder
        quantized = torch.ao.quantization.quantize_dynamic(getattr(owner, leaf), {torch.nn.Linear}, dtype=torch.qint8)
        setattr(owner, leaf, quantized)
    return encoder.to(memory_format=torch.channels_last)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--int8", action="store_true", help="dynamic int8 linear layers instead of bf16 stages")
    args = parser.parse_args(argv)

    from MedFoundationSegLib.models.build import build_model
    from MedFoundationSegLib.runtime.retained_heap import retained_heap
    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    from MedFoundationSegLib.segment.intensity import apply_window
    from MedFoundationSegLib.segment.predictor import SlicePredictor
    from MedFoundationSegLib.segment.preprocessing import slices_to_input

    n = args.slices
    depth = max(n, 16)
    first = (depth - n) // 2
    phantom = make_phantom(seed=0, shape_kji=(depth, args.size, args.size))
    boxes = boxes_per_slice(phantom.labels.array, skip_values={phantom.label_ids.get("spine", -1)})
    p = SlicePredictor(phantom.image, "litemedsam", window="soft_tissue", device="cpu", weights="registry",
                       precision="fp32")
    model = build_model("litemedsam", weights="registry", device=torch.device("cpu")).eval()
    indices = range(first, first + n)
    images = {i: slices_to_input(apply_window(p.slice_image(i), p.window), p.transform, p.preprocessing)
              for i in indices}

    def mask_of(embedding: torch.Tensor, i: int) -> np.ndarray:
        box = torch.as_tensor(p.transform.boxes_to_input(np.asarray([boxes[i]])), dtype=torch.float32)
        sparse, dense = model.prompt_encoder(points=None, boxes=box, masks=None)
        low_res, _ = model.mask_decoder(image_embeddings=embedding.float(),
                                        image_pe=model.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                        dense_prompt_embeddings=dense, multimask_output=False)
        return (p.transform.logits_to_slice(low_res) > 0)[0, 0].numpy()

    with torch.inference_mode():
        reference = {i: mask_of(model.image_encoder(images[i]), i) for i in indices}
        if args.int8:  # only stages 1-3 have linear layers
            attention_stages = ("layers.1", "layers.2", "layers.3")
            configs = [attention_stages] + [(stage,) for stage in attention_stages] + [()]
        else:
            configs = [STAGES] + [tuple(s for s in STAGES if s != kept) for kept in STAGES] + \
                [STAGES[:2], STAGES[:3], ()]
        print(f"{n} slices of {args.size}x{args.size}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        for config in configs:
            encoder = (int8_encoder if args.int8 else mixed_encoder)(model.image_encoder, config)
            encoder(images[first].contiguous(memory_format=torch.channels_last))  # warm-up
            start = time.perf_counter()
            with retained_heap():  # as the predictor runs its encoder
                embeddings = {i: encoder(images[i].contiguous(memory_format=torch.channels_last)) for i in indices}
            seconds = (time.perf_counter() - start) / n
            scores = np.array([dice(mask_of(embeddings[i], i), reference[i]) for i in indices])
            label = "+".join(config) if config else "none (all fp32)"
            precision = "int8" if args.int8 else "bf16"
            print(f"{precision}: {label:52s} {1000 * seconds:7.1f} ms/slice  worst Dice {scores.min():.4f}  "
                  f"mean {scores.mean():.4f}  below 0.98: {int((scores < 0.98).sum())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
