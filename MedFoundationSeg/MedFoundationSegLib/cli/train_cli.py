"""``medfoundationseg medlam-train``: self-supervised MedLAM training on a folder of unlabeled CT volumes."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "medlam-train", help="train MedLAM (RDR + MSS, self-supervised) on a folder of unlabeled CT volumes",
        description="Self-supervised MedLAM training as in MedLSAM: pairs of patches of one scan, relative-distance "
                    "regression (RDR) + multi-scale similarity (MSS). Writes checkpoint_last.tar / "
                    "checkpoint_best.tar (resumable), history.json and the release-format medlam.pth into --out. "
                    "Defaults are the reference's (Adam 1e-4, StepLR 10 epochs x 0.8, batch 4, 64^3 patches).")
    parser.add_argument("data", help="folder of CT volumes (NIfTI, NRRD, MHA) or DICOM series folders")
    parser.add_argument("--out", required=True, help="output folder for checkpoints, history and medlam.pth")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=1000, help="steps per epoch")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=64, help="patch side in 3 mm voxels (64 = release network)")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--step-size", type=int, default=10, help="StepLR period in epochs")
    parser.add_argument("--gamma", type=float, default=0.8, help="StepLR factor")
    parser.add_argument("--base-channels", type=int, default=24,
                        help="network width (24 = release layout; smaller only for experiments)")
    parser.add_argument("--mss-weight", type=float, default=1.0, help="0 trains RDR only (no decoder, faster)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=2023)
    parser.add_argument("--resume", help="a checkpoint .tar, or an output folder holding checkpoint_last.tar")
    parser.add_argument("--overwrite", action="store_true", help="train afresh into a non-empty --out folder")
    val = parser.add_mutually_exclusive_group()
    val.add_argument("--val-folder", help="folder of held-out validation volumes")
    val.add_argument("--val-fraction", type=float, default=0.1,
                     help="fraction of the data folder held out for validation (default 0.1; 0 = none)")
    parser.add_argument("--val-pairs", type=int, default=50, help="fixed validation pairs (RDR error in mm)")
    parser.add_argument("--modality", default="auto", choices=("auto", "CT", "MR", "unit"))
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from MedFoundationSegLib.core.progress import Cancelled
    from MedFoundationSegLib.core.volume import VolumeError
    from MedFoundationSegLib.localize.medlam.train import TrainConfig, train
    from MedFoundationSegLib.localize.medlam.training_data import (
        TrainError,
        collect_volume_paths,
        load_work_arrays,
        split_validation,
    )

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not args.resume and not args.overwrite:
        raise FileExistsError(f"{out} is not empty; continue its training with --resume {out}, or pass --overwrite "
                              "to train afresh into it")
    try:
        config = TrainConfig(epochs=args.epochs, iterations=args.iterations, batch_size=args.batch_size,
                             patch_size=args.patch_size, lr=args.lr, weight_decay=args.weight_decay,
                             step_size=args.step_size, gamma=args.gamma, base_chns=args.base_channels,
                             mss_weight=args.mss_weight, device=args.device, seed=args.seed,
                             val_pairs=args.val_pairs, modality=args.modality)
        paths = collect_volume_paths(args.data)
        if args.val_folder:
            train_paths, val_paths = paths, collect_volume_paths(args.val_folder)
        else:
            train_paths, val_paths = split_validation(paths, args.val_fraction, args.seed)
        print(f"{len(train_paths)} training and {len(val_paths)} validation volume(s)")
        train_arrays = load_work_arrays(train_paths, config.spacing_mm, config.modality)
        val_arrays = load_work_arrays(val_paths, config.spacing_mm, config.modality) if val_paths else []

        def on_epoch(entry: dict) -> None:
            parts = [f"epoch {entry['epoch']:>4}", f"step {entry['step']}", f"lr {entry['lr']:.3g}"]
            if entry.get("train_loss") is not None:
                parts.append(f"train loss {entry['train_loss']:.4g} (rdr {entry['train_rdr']:.4g}, "
                             f"mss {entry['train_mss']:.4g})")
            if "val_rdr_error_mm" in entry:
                parts.append(f"val RDR error {entry['val_rdr_error_mm']:.2f} mm")
            parts.append(f"{entry['seconds']:.1f} s")
            print(", ".join(parts), flush=True)

        result = train(train_arrays, val_arrays, args.out, config, resume=args.resume, on_epoch=on_epoch)
    except (TrainError, VolumeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Cancelled as error:
        print(f"stopped: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"interrupted; resume from the last epoch with --resume {Path(args.out)}", file=sys.stderr)
        return 130
    print(f"{result.steps} steps in {result.seconds:.1f} s; weights: {result.final_weights}")
    return 0
