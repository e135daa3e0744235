"""Timing of both localizers on a CT-sized volume (512x512x300), split into load / resample / network, plus peak memory.

Usage: python benchmarks/bench_localize.py [--engine both|medlam|registration] [--scales feature0 feature1 feature2]
       [--query-patches 10] [--shape 300 512 512] [--counts 1 4] [--precision auto|fp32|bf16] [--compare-fp32]
MedLAM runs with seeded random weights (timing only). Support (template) features are timed separately: they are
computed once per template set and cached. One structure = 6 extreme points (WPL). --compare-fp32 reruns in fp32
with the same weights and prints the largest point move of the reduced precision. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ helpers (compute_bound)


def peak_rss_gb() -> float:
    """VmHWM of this process (peak resident set since the last reset_peak_rss), in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 ** 2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # Linux: kB


def reset_peak_rss() -> None:
    """Start the peak-RSS count from the current RSS (Linux >= 4.0), so phantom making is not counted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def ct_sized_phantom(shape_kji, seed: int, workdir: Path):
    """A small phantom resampled up to ``shape_kji`` (fast), written to NIfTI so that loading is timed too."""
    import numpy as np
    import SimpleITK as sitk
    from MedFoundationSegLib.core.volume import Volume, write_volume
    from MedFoundationSegLib.sampledata.phantoms import make_phantom

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


def max_point_shift_vox(a: dict, b: dict) -> float:
    """Largest move of any localized point between two runs, in working-grid (3 mm) voxels (max over axes)."""
    import numpy as np

    return max(float(np.abs(np.subtract(a[s].details["points_zyx_vox"], b[s].details["points_zyx_vox"])).max())
               for s in a)


def time_medlam(localizer, templates, query_path, structures: list[str], repeats: int = 1) -> tuple[dict, dict]:
    """One query run (load from disk, resample, network) with support features already cached; best of repeats."""
    from MedFoundationSegLib.core.volume import read_volume

    best = None
    for _ in range(repeats):
        t = time.perf_counter()
        query = read_volume(query_path)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        boxes = localizer.localize(templates, query, structures)
        total = dict(localizer.timings, load_s=load_s, total_s=load_s + time.perf_counter() - t)
        if best is None or total["total_s"] < best[0]["total_s"]:
            best = (total, boxes)
    return best


def print_medlam_row(label: str, n_structures: int, t: dict) -> None:
    network = t["query_network_s"]
    print(f"  {label}: {n_structures} structure(s) = {int(t['n_points'])} points: total {t['total_s']:.2f} s "
          f"(load {t['load_s']:.2f}, resample+normalise {t['query_preprocess_s']:.2f}, network {network:.2f} = "
          f"query reference {t['query_reference_s']:.2f} + re-centring {t['recentre_s']:.2f} + MSS "
          f"{t.get('mss_s', 0.0):.2f} [forward {t.get('mss_network_s', 0.0):.2f}, similarity "
          f"{t.get('mss_similarity_s', 0.0):.2f}]); per structure {t['total_s'] / n_structures:.2f} s")


def time_components(rounds: int = 2, batch: int = 4) -> None:
    """Per-point cost of each MedLAM step at 64^3 with the release-size network (random weights), interleaved over
    ``rounds`` so machine load hits every variant alike; prints the median seconds per point."""
    import statistics

    import torch
    import torch.nn.functional as F
    from MedFoundationSegLib.localize.medlam.matching import correlate_fft
    from MedFoundationSegLib.localize.medlam.network import MedLAM, set_precision

    torch.manual_seed(0)
    fp32 = MedLAM().eval()
    bf16 = set_precision(MedLAM().eval(), "bf16")
    bf16.load_state_dict(fp32.state_dict())
    x = torch.rand(batch, 1, 64, 64, 64)
    full = ("feature0", "feature1", "feature2")
    coarse = ("feature0", "feature1")

    def forward(model, scales):
        fc = not scales
        return lambda: model(x, out_fc=fc, decoder=bool(scales), out_feature=bool(scales), out_classification=False,
                             feature_scales=scales)

    with torch.inference_mode():
        maps = fp32(x[:1], out_feature=True, out_classification=False)
    templates = {"feature0": torch.randn(96, 2, 2, 2), "feature1": torch.randn(96, 4, 4, 4),
                 "feature2": torch.randn(96, 8, 8, 8)}
    pads = {"feature0": 1, "feature1": 2, "feature2": 4}

    def fft(scale):
        return lambda: correlate_fft(F.normalize(maps[scale][0], dim=0), templates[scale], pads[scale])

    def grouped(scale):  # direct conv3d for one point (the previous code grouped all points into one call)
        return lambda: F.conv3d(F.normalize(maps[scale], dim=1), templates[scale][None], padding=pads[scale])

    variants = {  # name: (callable, points per call)
        "encoder+FC fp32 (RDR, query reference)": (forward(fp32, ()), batch),
        "decoder to 32^3 fp32": (forward(fp32, coarse), batch),
        "decoder to 32^3 bf16-decoder": (forward(bf16, coarse), batch),
        "decoder to 64^3 fp32": (forward(fp32, full), batch),
        "decoder to 64^3 bf16-decoder": (forward(bf16, full), batch),
        "similarity feature0 FFT": (fft("feature0"), 1),
        "similarity feature1 FFT": (fft("feature1"), 1),
        "similarity feature2 FFT": (fft("feature2"), 1),
        "similarity feature0 direct conv": (grouped("feature0"), 1),
        "similarity feature1 direct conv": (grouped("feature1"), 1),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for call, _points in variants.values():  # warm-up: oneDNN primitives, FFT plans
            if call is not variants["decoder to 64^3 fp32"][0]:
                call()
        for _ in range(rounds):
            for name, (call, _points) in variants.items():
                t = time.perf_counter()
                call()
                seconds[name].append(time.perf_counter() - t)
    print(f"per-point cost at 64^3, median of {rounds} interleaved rounds (batch {batch}), load average "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}:")
    for name, (_call, points) in variants.items():
        print(f"  {name}: {statistics.median(seconds[name]) / points:.3f} s/point")


def print_medlam_bound(scales: tuple[str, ...], query_patches: int, counts: list[int], precision: str) -> None:
    """The fastest the MedLAM network can localize here: its matrix work (query reference: encoder + FC on each
    query patch; MSS: encoder + decoder down to the finest scale used, one 64^3 patch per point) at this CPU's GEMM
    rate (the decoder at the bf16 rate where it runs in bf16). The similarity search is not counted: optimistic."""
    import torch
    from compute_bound import gemm_gflops, gflop
    from MedFoundationSegLib.localize.medlam.network import MedLAM

    net = MedLAM().eval().to("meta")
    x = torch.empty(1, 1, 64, 64, 64, device="meta")
    reference = gflop(lambda: net(x, out_fc=True, decoder=False, out_feature=False, out_classification=False))
    point = gflop(lambda: net(x, out_fc=False, decoder=True, out_feature=True, out_classification=False,
                              feature_scales=scales)) if scales else 0.0
    fp32 = gemm_gflops(torch.float32)
    bf16_decoder = precision == "bf16"
    mss_rate = gemm_gflops(torch.bfloat16) if bf16_decoder else fp32
    for n in counts:
        work_reference, work_mss = query_patches * reference, 6 * n * point
        seconds = work_reference / fp32 + work_mss / mss_rate
        print(f"  compute bound, {n} structure(s): {work_reference:.0f} GFLOP query reference ({query_patches} "
              f"patches x {reference:.1f}) + {work_mss:.0f} GFLOP MSS ({6 * n} patches x {point:.1f}, scales "
              f"{', '.join(scales) or 'none'}); dense GEMM here: fp32 {fp32:.0f} GFLOP/s"
              + (f", bf16 {mss_rate:.0f} GFLOP/s" if bf16_decoder else "") +
              f" ({torch.get_num_threads()} threads) -> at least {seconds:.1f} s of network time")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("both", "medlam", "registration"), default="both")
    parser.add_argument("--shape", type=int, nargs=3, default=(300, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--scales", nargs="*", default=["feature0", "feature1", "feature2"])
    parser.add_argument("--query-patches", type=int, default=10)
    parser.add_argument("--structures", nargs="+", default=["liver", "spleen", "kidney_left", "kidney_right"])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4],
                        help="time MedLAM for the first N structures, for each N")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto")
    parser.add_argument("--compare-fp32", action="store_true",
                        help="also run fp32 (same weights) and print how far the points move (working voxels)")
    parser.add_argument("--recentre", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--components", type=int, default=0, metavar="ROUNDS",
                        help="only time the per-point cost of each network/similarity step (interleaved rounds)")
    args = parser.parse_args(argv)
    if args.components:
        time_components(args.components, args.batch_size)
        return 0

    import torch
    from MedFoundationSegLib.core.volume import read_volume
    from MedFoundationSegLib.localize.medlam.localizer import MedLAMConfig, MedLAMLocalizer
    from MedFoundationSegLib.localize.medlam.network import build_medlam, model_dtype, resolve_precision
    from MedFoundationSegLib.localize.preprocess import preprocess
    from MedFoundationSegLib.localize.registration import localize_registration
    from MedFoundationSegLib.localize.templates import Template, TemplateSet

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}, "
          f"load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        template_path, template_labels, ids = ct_sized_phantom(args.shape, 0, tmp)
        query_path, _, _ = ct_sized_phantom(args.shape, 1, tmp)
        print(f"made two {tuple(args.shape)} volumes in {time.perf_counter() - t:.1f} s")
        ids = {s: ids[s] for s in args.structures}
        template = Template("t0", image_path=template_path, _labels=template_labels, label_ids=ids)
        t = time.perf_counter()
        query = read_volume(query_path)
        load_s = time.perf_counter() - t
        if args.engine in ("both", "medlam"):
            reset_peak_rss()
            t = time.perf_counter()
            preprocess(query)
            resample_s = time.perf_counter() - t
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            precision = resolve_precision(args.precision, device)
            config = MedLAMConfig(feature_scales=tuple(args.scales), query_patches=args.query_patches,
                                  recentre_iterations=args.recentre, batch_size=args.batch_size)
            localizer = MedLAMLocalizer(model=build_medlam(None, device, precision=precision), config=config)
            print(f"medlam: precision {precision} (network dtype {model_dtype(localizer.model)}), scales {args.scales},"
                  f" query patches {args.query_patches}, re-centring {args.recentre}, batch {args.batch_size}; "
                  f"load {load_s:.2f} s, resample+normalise {resample_s:.2f} s")
            templates = TemplateSet([template])
            t = time.perf_counter()
            localizer.support_features(templates, args.structures)
            support_s = time.perf_counter() - t
            print(f"  support features for {len(args.structures)} structures, once per template set: {support_s:.2f} s")
            runs = {}
            for n in args.counts:
                timing, boxes = time_medlam(localizer, templates, query_path, args.structures[:n], args.repeats)
                runs[n] = boxes
                print_medlam_row(precision, n, timing)
            print(f"  peak RSS (MedLAM part, {precision}) {peak_rss_gb():.2f} GB")
            if device.type == "cpu":
                print_medlam_bound(tuple(args.scales), args.query_patches, args.counts, precision)
            if args.compare_fp32 and precision != "fp32":
                reference = MedLAMLocalizer(model=build_medlam(None, device, precision="fp32"), config=config)
                reference.support_features(templates, args.structures)
                for n in args.counts:
                    timing, boxes = time_medlam(reference, templates, query_path, args.structures[:n], args.repeats)
                    print_medlam_row("fp32", n, timing)
                    print(f"  {precision} vs fp32, {n} structure(s): largest point move "
                          f"{max_point_shift_vox(runs[n], boxes):.0f} working voxel(s) (3 mm)")
        if args.engine in ("both", "registration"):
            reset_peak_rss()
            t = time.perf_counter()
            boxes = localize_registration(TemplateSet([template]), query, args.structures)
            total_s = time.perf_counter() - t
            timings = boxes[args.structures[0]].details["timings_s"]
            print(f"registration: load {load_s:.2f} s, query prepare (shrink+normalise) {timings['query_prepare_s']:.2f}"
                  f" s, registration {timings['register_t0_s']:.2f} s, total {total_s + load_s:.2f} s "
                  f"({len(args.structures)} structures); peak RSS (registration part) {peak_rss_gb():.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
