"""Large boxes: which model and padding they get, and the exterior background (air around a body, a holder
behind it) cut from their masks. Accuracy figures: benchmarks/bench_large_structures.py."""

from __future__ import annotations

import numpy as np
from MedFoundationSegLib.core.volume import Volume
from MedFoundationSegLib.sampledata.large_structures import body_mask, with_holder
from MedFoundationSegLib.segment.exterior import drop_exterior_background
from MedFoundationSegLib.workflow.box_modes import large_box_route
from MedFoundationSegLib.workflow.options import Options


def _body_phantom():
    """A water ellipse with an air-filled 'lung' inside, in air, 64 x 64 pixels, 6 slices."""
    yy, xx = np.mgrid[:64, :64]
    body = ((yy - 30) / 20.0) ** 2 + ((xx - 32) / 26.0) ** 2 <= 1
    lung = ((yy - 26) / 6.0) ** 2 + ((xx - 22) / 6.0) ** 2 <= 1
    plane = np.where(body, 40.0, -1000.0)
    plane[lung] = -850.0
    return Volume(np.repeat(plane[None], 6, axis=0).astype(np.float32), (1.0, 1.0, 2.0)), np.repeat(body[None], 6, 0)


def test_the_holder_and_the_air_around_a_body_are_cut_away_and_enclosed_air_stays():
    image, body = _body_phantom()
    holder_image, holder = with_holder(image, body_mask(image), gap_mm=3.0, thickness_mm=4.0)
    assert holder.any() and not (holder & body).any()
    # What a model does with the holder in the box: body, holder and the air between them as one blob.
    box = np.array([[0, 0, 0], [63, 63, 5]])
    blob = np.zeros_like(body)
    blob[:, 5:62, 4:61] = True
    cleaned, removed = drop_exterior_background(holder_image.array, blob, box, dark_below=-500.0)
    assert removed > 0
    assert np.array_equal(cleaned, body & blob)  # the lung (enclosed air) stays; holder and gap air go


def test_an_ordinary_mask_is_left_alone():
    image, body = _body_phantom()
    organ = np.zeros_like(body)
    organ[:, 20:40, 20:40] = True
    cleaned, removed = drop_exterior_background(image.array, organ & body, np.array([[20, 20, 0], [39, 39, 5]]),
                                                dark_below=-500.0)
    assert removed == 0 and np.array_equal(cleaned, organ & body)


def test_large_boxes_are_routed_unpadded_and_small_ones_are_not(monkeypatch):
    from MedFoundationSegLib.core import weights

    image, _ = _body_phantom()
    monkeypatch.setattr(weights, "cached_status", lambda name, **_: ("p", "ok"))
    options = Options()
    small, decision = large_box_route(image, np.array([[10, 10, 0], [30, 30, 5]]), options)
    assert small is options and decision is None
    large, decision = large_box_route(image, np.array([[2, 6, 0], [60, 55, 5]]), options)
    assert large.model == "mobilesam" and decision == {"box_fraction": round(59 * 50 / 64 ** 2, 3), "model": "mobilesam"}
    assert large_box_route(image, np.array([[2, 6, 0], [60, 55, 5]]), Options(large_box_model=""))[1] is None
    monkeypatch.setattr(weights, "cached_status", lambda name, **_: ("p", "missing"))
    kept, decision = large_box_route(image, np.array([[2, 6, 0], [60, 55, 5]]), options)
    assert kept.model == "litemedsam" and "not cached" in decision["note"]
