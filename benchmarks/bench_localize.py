"""Timing of both localizers on a CT-sized volume (512x512x300), split into load / resample / network, plus peak memory.

Usage: python benchmarks/bench_localize.py [--engine both|medlam|registration] [--scales feature0 feature1 feature2]
       [--query-patches 10] [--shape 300 512 512]
MedLAM runs with seeded random weights (timing only). Support (template) features are timed separately: they are
computed once per template set and cached. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: kB


def ct_sized_phantom(shape_kji, seed: int, workdir: Path):
    """A small phantom resampled up to ``shape_kji`` (fast), written to NIfTI so that loading is timed too."""
    import numpy as np
    import SimpleITK as sitk

    from MedFoundationSegLib.phantoms import make_phantom
    from MedFoundationSegLib.volume import Volume, write_volume

    small = make_phantom(seed, shape_kji=(60, 128, 128))
    fov = np.array(small.image.shape_kji[::-1]) * np.array(small.image.spacing_mm)
    spacing = fov / np.array(shape_kji[::-1])
    ref = sitk.Image([int(s) for s in shape_kji[::-1]], sitk.sitkInt16)
    ref.SetSpacing(tuple(spacing))
    ref.SetOrigin(tuple(small.image.lps_from_ijk(np.full((1, 3), -0.5))[0] + spacing / 2))
    big = Volume.from_sitk(sitk.Resample(small.image.to_sitk(), ref, sitk.Transform(), sitk.sitkLinear, -1024))
    labels = Volume.from_sitk(sitk.Resample(small.labels.to_sitk(), ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    path = write_volume(big, workdir / f"ct_{seed}.nii.gz")
    return path, labels, small.label_ids


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("both", "medlam", "registration"), default="both")
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--scales", nargs="*", default=["feature0", "feature1", "feature2"])
    parser.add_argument("--query-patches", type=int, default=10)
    parser.add_argument("--structures", nargs="+", default=["liver", "spleen", "kidney_left"])
    args = parser.parse_args(argv)

    import torch

    from MedFoundationSegLib.volume import read_volume
    from MedLAMLocalizeLib.localize import MedLAMConfig, MedLAMLocalizer
    from MedLAMLocalizeLib.preprocess import preprocess
    from MedLAMLocalizeLib.registration import localize_registration
    from MedLAMLocalizeLib.templates import Template, TemplateSet

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        template_path, template_labels, ids = ct_sized_phantom(args.shape, 0, tmp)
        query_path, _, _ = ct_sized_phantom(args.shape, 1, tmp)
        print(f"made two {tuple(args.shape)} volumes in {time.perf_counter() - t:.1f} s")
        ids = {s: ids[s] for s in args.structures}
        template = Template("t0", image_path=template_path, _labels=template_labels, label_ids=ids)
        rows = []
        t = time.perf_counter()
        query = read_volume(query_path)
        load_s = time.perf_counter() - t
        if args.engine in ("both", "medlam"):
            t = time.perf_counter()
            preprocess(query)
            resample_s = time.perf_counter() - t
            config = MedLAMConfig(feature_scales=tuple(args.scales), query_patches=args.query_patches)
            localizer = MedLAMLocalizer(weights=None, config=config)
            templates = TemplateSet([template])
            t = time.perf_counter()
            localizer.support_features(templates, args.structures)
            support_s = time.perf_counter() - t
            t = time.perf_counter()
            localizer.localize(templates, query, args.structures)
            total_s = time.perf_counter() - t
            network_s = localizer.timings["query_network_s"]
            rows.append(("medlam", load_s, localizer.timings["query_preprocess_s"], network_s, total_s + load_s))
            print(f"medlam: load {load_s:.2f} s, resample+normalise {resample_s:.2f} s (in run: "
                  f"{localizer.timings['query_preprocess_s']:.2f}), network {network_s:.2f} s, "
                  f"total {total_s + load_s:.2f} s; support features once per template set {support_s:.2f} s; "
                  f"scales {args.scales}, query patches {args.query_patches}; peak RSS {peak_rss_gb():.2f} GB")
        if args.engine in ("both", "registration"):
            t = time.perf_counter()
            boxes = localize_registration(TemplateSet([template]), query, args.structures)
            total_s = time.perf_counter() - t
            timings = boxes[args.structures[0]].details["timings_s"]
            print(f"registration: load {load_s:.2f} s, query prepare (shrink+normalise) {timings['query_prepare_s']:.2f}"
                  f" s, registration {timings['register_t0_s']:.2f} s, total {total_s + load_s:.2f} s; "
                  f"peak RSS {peak_rss_gb():.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
