"""``medfoundationseg weights list|fetch|verify|add`` and ``medfoundationseg selfcheck``."""

from __future__ import annotations

import platform
import sys

from MedFoundationSegLib.core import weights


def register(subparsers) -> None:
    parser = subparsers.add_parser("weights", help="list, fetch, verify or add model weights")
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    actions.add_parser("list", help="every registered model, its file, size, license and cache status") \
        .set_defaults(func=_list)
    fetch = actions.add_parser("fetch", help="download and verify the weights of one or more models")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument("--force", action="store_true", help="download again even if a verified file is cached")
    fetch.set_defaults(func=_fetch)
    verify = actions.add_parser("verify", help="re-check cached files against the registry's checksums")
    verify.add_argument("names", nargs="*", metavar="NAME", help="default: every cached model")
    verify.add_argument("--quick", action="store_true",
                        help="trust files whose size and time match their last verification (no re-hash)")
    verify.set_defaults(func=_verify)
    add = actions.add_parser("add", help="put a file you downloaded by hand into the cache (checked first)")
    add.add_argument("name")
    add.add_argument("path")
    add.add_argument("--force", action="store_true", help="replace a cached file")
    add.set_defaults(func=_add)
    subparsers.add_parser("selfcheck", help="print python, torch, device and the weights found") \
        .set_defaults(func=_selfcheck)


def _list(args) -> int:
    print(f"cache: {weights.weights_dir()}")
    print(f"{'model':<14}{'file':<24}{'size':>12}  {'license':<12}{'source':<8}status")
    for name in weights.model_names():
        spec = weights.weight_spec(name)
        size = f"{spec.size / 1e6:.1f} MB" if spec.size else "?"
        source = spec.sources[0]["kind"] if spec.sources else "-"
        _, status = weights.cached_status(name)
        print(f"{name:<14}{spec.file:<24}{size:>12}  {spec.license:<12}{source:<8}{status}")
    return 0


def _progress_printer(name: str):
    def show(done: int, total: int | None) -> None:
        if sys.stderr.isatty():
            text = f"{done / 1e6:8.1f} / {total / 1e6:.1f} MB" if total else f"{done / 1e6:8.1f} MB"
            print(f"\r{name}: {text}", end="", file=sys.stderr, flush=True)
    return show


def _fetch(args) -> int:
    failed = 0
    for name in args.names:
        try:
            path = weights.fetch(name, force=args.force, progress=_progress_printer(name))
            print(f"{name}: ok  {path}")
        except (KeyError, weights.WeightsError) as error:
            print(f"{name}: FAILED  {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def _verify(args) -> int:
    names = args.names or [n for n in weights.model_names() if weights.cached_status(n)[1] != "missing"]
    bad = 0
    for name in names:
        path, status = weights.cached_status(name, rehash=not args.quick)
        if args.names and status == "missing":
            bad += 1
        elif status.startswith("corrupt"):
            bad += 1
        print(f"{name}: {status}  {path}")
    if not names:
        print("no weights in the cache yet; fetch with: medfoundationseg weights fetch litemedsam")
    return 1 if bad else 0


def _add(args) -> int:
    path = weights.add_local_file(args.name, args.path, force=args.force)
    print(f"{args.name}: verified and added as {path}")
    return 0


def _selfcheck(args) -> int:
    print(f"python   {sys.version.split()[0]} ({sys.executable})")
    print(f"platform {platform.platform()}")
    try:
        import torch
    except ImportError as error:
        print(f"torch    MISSING ({error}); run: python3 setup_env.py")
        return 1
    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda})"
    elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        device = "mps (Apple GPU)"
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    print(f"torch    {torch.__version__} ({build} build), {torch.get_num_threads()} threads")
    print(f"device   {device}")
    print(f"cache    {weights.weights_dir()}")
    status_ok = True
    for name in weights.model_names():
        path, status = weights.cached_status(name)
        if status == "missing":
            continue
        status_ok &= status.startswith("ok")
        print(f"weights  {name:<14}{status}  {path}")
    default = [n for n, e in weights.load_registry()["models"].items() if e.get("default")]
    for name in default:
        if weights.cached_status(name)[1] == "missing":
            print(f"weights  {name:<14}missing  (fetch with: medfoundationseg weights fetch {name})")
            status_ok = False
    return 0 if status_ok else 1
