"""Which TinyViT stages can run in bf16 without moving the masks? A per-stage precision sweep (not a test).

    python benchmarks/bench_encoder_stages.py                 # LiteMedSAM, 40 slices of a 512x512 phantom
    python benchmarks/bench_encoder_stages.py --slices 8

For each configuration some encoder stages run in bf16 (weights and activations, cast back to fp32 at the stage's
output) and the others in fp32; every slice is decoded in fp32 from that embedding with the benchmark's box and
compared with the plain fp32 encoder's mask. Prints ms per slice (this process, batch 1, channels-last, BN folded),
the worst and mean Dice, and how many slices fall below 0.98. Same slices and boxes as bench_slice_predictor.py.
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
    from MedFoundationSegLib.encoder_runtime import fold_batchnorm

    encoder = copy.deepcopy(encoder)
    fold_batchnorm(encoder)

    def to_bf16(_module, args, kwargs):
        return tuple(a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args), kwargs

    for name in bf16_stages:
        stage = encoder.get_submodule(name).to(torch.bfloat16)
        stage.register_forward_pre_hook(to_bf16, with_kwargs=True)
        stage.register_forward_hook(lambda _m, _args, out: out.float())
    return encoder.to(memory_format=torch.channels_last)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)

    from MedFoundationSegLib.intensity import apply_window
    from MedFoundationSegLib.models.build import build_model
    from MedFoundationSegLib.phantoms import make_phantom
    from MedFoundationSegLib.predictor import SlicePredictor
    from MedFoundationSegLib.preprocessing import slices_to_input

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
        configs = [STAGES] + [tuple(s for s in STAGES if s != kept) for kept in STAGES] + \
            [STAGES[:2], STAGES[:3], ()]
        print(f"{n} slices of {args.size}x{args.size}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        for config in configs:
            encoder = mixed_encoder(model.image_encoder, config)
            encoder(images[first].contiguous(memory_format=torch.channels_last))  # warm-up
            start = time.perf_counter()
            embeddings = {i: encoder(images[i].contiguous(memory_format=torch.channels_last)) for i in indices}
            seconds = (time.perf_counter() - start) / n
            scores = np.array([dice(mask_of(embeddings[i], i), reference[i]) for i in indices])
            label = "+".join(config) if config else "none (all fp32)"
            print(f"bf16: {label:52s} {1000 * seconds:7.1f} ms/slice  worst Dice {scores.min():.4f}  "
                  f"mean {scores.mean():.4f}  below 0.98: {int((scores < 0.98).sum())}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
