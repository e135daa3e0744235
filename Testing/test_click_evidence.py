"""An exclude click on tissue unlike the structure takes that tissue out of the mask; on alike tissue or an edge it
adds nothing (segment/click_evidence.py), through the graph cut that uses it."""

import numpy as np
from MedFoundationSegLib.segment import click_evidence
from MedFoundationSegLib.segment.refine import Annotations, GraphCutParams, refine_graphcut
from scipy import ndimage


def _disk_with_fat_crescent(seed: int = 0):
    """A structure (100) of radius 12 on 5 slices; a crescent of fat (-100) around its right half, 5 voxels thick,
    that the model took in (probability 0.9 over both); other tissue (40) around; noise 5."""
    j, i = np.mgrid[:64, :64]
    radius = np.hypot(j - 32, i - 32)
    disk = radius <= 12
    crescent = (radius <= 17) & ~disk & (i > 33)
    image = np.full((5, 64, 64), 40.0)
    image[:, disk] = 100.0
    image[:, crescent] = -100.0
    image += np.random.default_rng(seed).normal(0, 5, image.shape)
    truth = np.zeros(image.shape, bool)
    truth[:, disk] = True
    prob = np.full(image.shape, 0.1, np.float32)
    prob[:, disk | crescent] = 0.9
    return image.astype(np.float32), prob, truth, crescent


def _dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_an_exclude_click_on_unlike_tissue_takes_all_of_it_out():
    image, prob, truth, crescent = _disk_with_fat_crescent()
    click = Annotations(box_kji=((0, 4), (12, 52), (12, 52)), clicks_kji=np.array([[2, 19, 40]]),
                        click_positive=np.array([False]))  # at the crescent's upper end
    with_regions = refine_graphcut(image, prob, click).mask
    without = refine_graphcut(image, prob, click, params=GraphCutParams(exclude_unlike_tissue=False)).mask
    assert _dice(with_regions, truth) > 0.95
    assert not (with_regions[2] & crescent).any()
    assert _dice(without, truth) < 0.85  # the click's pull alone leaves most of the crescent


def test_an_exclude_click_on_alike_tissue_or_an_edge_adds_nothing():
    image, prob, truth, _ = _disk_with_fat_crescent()
    alike = image.copy()
    alike[:, 15:24, 36:45] = 100.0  # a neighbour of the structure's own intensity where the click lands
    assert not click_evidence.exclude_regions(prob, alike, np.array([[2, 19, 40]]), np.array([False])).any()
    # on the structure's blurred edge with the other tissue, or beside it on that tissue: no rim of the edge
    blurred = ndimage.gaussian_filter(image, (0, 1.5, 1.5))
    disk_only = np.where(truth, 0.9, 0.1).astype(np.float32)
    for click in ([2, 32, 20], [2, 32, 12]):
        assert not click_evidence.exclude_regions(disk_only, blurred, np.array([click]), np.array([False])).any()
    # an include click is not an exclude click
    assert click_evidence.exclude_regions(prob, image, np.array([[2, 19, 40]]), np.array([False])).any()
    assert not click_evidence.exclude_regions(prob, image, np.array([[2, 19, 40]]), np.array([True])).any()
    # an include click in the same tissue says it belongs to the structure there
    both = np.array([[2, 19, 40], [3, 45, 40]])
    assert not click_evidence.exclude_regions(prob, image, both, np.array([False, True])).any()


def test_an_exclude_click_on_a_tissue_the_structure_is_made_of_adds_nothing():
    """A stomach's gas: the crescent the model took beyond the wall is gas (-700) and so is a lumen inside the
    structure that opens onto it, together about a third of the mask's interior. Gas is part of this structure: an
    exclude click on the crescent's gas must not empty the lumen, so it adds nothing (the click's pull remains)."""
    image, prob, truth, crescent = _disk_with_fat_crescent()
    j, i = np.mgrid[:64, :64]
    lumen = (np.hypot(j - 26, i - 37) <= 4.5) & truth[2]
    image[:, lumen | crescent] = -700.0
    assert not click_evidence.exclude_regions(prob, image, np.array([[2, 40, 44]]), np.array([False])).any()
