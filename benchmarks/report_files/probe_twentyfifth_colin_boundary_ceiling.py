"""How exact must a Colin27 mask be for Dice 0.85, and could the image's intensities decide the rest?

For each AAL structure of the protocol's deformed Colin27 copies:
- ``inner r``: the truth eroded by r voxels (6-connected), i.e. a mask whose boundary is r voxels inside the truth's
  everywhere: its Dice says how much one voxel of boundary error costs on a structure of that size;
- ``ml r``: an intensity oracle: inside the eroded truth foreground, outside the truth dilated by r background, and in
  the band between each voxel labelled by the truth's own intensity histograms there (foreground inside the truth,
  background outside it; image smoothed with sigma 0.7 voxels): the best an intensity model could do if something
  else had already put the boundary within r voxels.

    PYTHONPATH=MedFoundationSeg python benchmarks/report_files/probe_twentyfifth_colin_boundary_ceiling.py
"""
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run_benchmarks import AAL_FULL, colin_cases, machine_description  # noqa: E402


def dice(a, b):
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def main():
    print(machine_description(), flush=True)
    _, cases = colin_cases(AAL_FULL[:12], 2)
    rows = []
    cross = ndimage.generate_binary_structure(3, 1)
    for name, make in cases:
        image, labels, ids = make()
        smooth = ndimage.gaussian_filter(image.array.astype(np.float32), 0.7)
        for structure, label in ids.items():
            truth = labels.array == label
            row = []
            for r in (1, 2, 3):
                inner = ndimage.binary_erosion(truth, cross, r)
                outer = ndimage.binary_dilation(truth, cross, r)
                band = outer & ~inner
                bins = np.linspace(*np.percentile(smooth[outer], [0.5, 99.5]), 33)
                fg, _ = np.histogram(smooth[truth & band], bins, density=True)
                bg, _ = np.histogram(smooth[band & ~truth], bins, density=True)
                index = np.clip(np.digitize(smooth, bins) - 1, 0, len(fg) - 1)
                row += [dice(inner, truth), dice(inner | (band & (fg[index] > bg[index])), truth)]
            rows.append(row)
            print(f"{name} {structure:<14} {int(truth.sum()):6d} voxels  " +
                  "  ".join(f"r{r}: inner {row[2 * n]:.3f} ml {row[2 * n + 1]:.3f}" for n, r in enumerate((1, 2, 3))),
                  flush=True)
    rows = np.array(rows)
    for n, r in enumerate((1, 2, 3)):
        print(f"r{r}: inner mean {rows[:, 2 * n].mean():.3f} (>= 0.85: {(rows[:, 2 * n] >= 0.85).sum()} of {len(rows)}), "
              f"intensity oracle mean {rows[:, 2 * n + 1].mean():.3f} (>= 0.85: {(rows[:, 2 * n + 1] >= 0.85).sum()} "
              f"of {len(rows)})")


if __name__ == "__main__":
    main()
