"""README walkthrough figures of the two Slicer modules, made by the modules' own Logic on a real MRML scene.

Why a script and not screenshots: desktop Slicer cannot run on the build machines, but its MRML core can
(``slicer-core``). Every box, point and segment drawn here is read back from the scene nodes the Logic created
(ROI nodes, point lists, segmentation labelmaps), exactly what the module panels would show in Slicer's slice views.

    python docs/make_slicer_figures.py [--out docs/figures] [--model litemedsam]

Needs the dev environment (slicer-core, Pillow, torch) and, for figure 3, the model weights in the cache
(``medfoundationseg weights fetch litemedsam``). Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO / "Testing", REPO / "MedFoundationSeg", REPO / "MedLAMLocalize"):
    sys.path.insert(0, str(folder))

SHAPE_KJI = (48, 128, 128)
PX_PER_MM = 2.0
CT_WINDOW = (40.0, 400.0)  # level, width (HU): soft tissue
STRUCTURES = {  # name -> display colour (Slicer's recommended colours of terminology.yaml where it has one)
    "liver": (221, 130, 101),
    "spleen": (157, 108, 162),
    "kidney_left": (185, 102, 83),
}
FONT_PATH = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def font(size: int):
    return ImageFont.truetype(str(FONT_PATH), size) if FONT_PATH.is_file() else ImageFont.load_default(size)


# --- one slice view: grey image + mapping from (i, j, k) to pixels ---------------------------------------------------
class SliceView:
    """An axial / coronal / sagittal plane of a (k, j, i) volume in radiological display (patient right on the
    left, anterior / superior up), scaled to true millimetres."""

    AXES = {"axial": 0, "coronal": 1, "sagittal": 2}  # fixed axis in (k, j, i)

    def __init__(self, array_kji: np.ndarray, spacing_ijk_mm, plane: str, index: int):
        self.plane, self.index, self.shape = plane, int(index), array_kji.shape
        self.fixed = self.AXES[plane]
        rows_axis, cols_axis = [axis for axis in range(3) if axis != self.fixed]
        spacing_kji = np.asarray(spacing_ijk_mm, float)[::-1]
        self.rows_axis, self.cols_axis = rows_axis, cols_axis
        self.scale = (PX_PER_MM * spacing_kji[cols_axis], PX_PER_MM * spacing_kji[rows_axis])  # px per voxel (x, y)
        self.flip_rows = rows_axis == 0  # k runs inferior -> superior: draw superior at the top
        self.size = (int(round(self.shape[cols_axis] * self.scale[0])),
                     int(round(self.shape[rows_axis] * self.scale[1])))
        self.image = self._grey(self.cut(array_kji))

    def cut(self, array_kji: np.ndarray) -> np.ndarray:
        plane = np.take(array_kji, self.index, axis=self.fixed)
        return plane[::-1] if self.flip_rows else plane

    def _grey(self, plane: np.ndarray) -> Image.Image:
        level, width = CT_WINDOW
        grey = np.clip((plane.astype(np.float32) - (level - width / 2)) / width, 0, 1) * 255
        return Image.fromarray(grey.astype(np.uint8)).resize(self.size, Image.BILINEAR).convert("RGB")

    def to_px(self, ijk) -> tuple[float, float]:
        kji = np.asarray(ijk, float)[::-1]
        col, row = kji[self.cols_axis], kji[self.rows_axis]
        if self.flip_rows:
            row = self.shape[self.rows_axis] - 1 - row
        return (col + 0.5) * self.scale[0], (row + 0.5) * self.scale[1]

    def distance_voxels(self, ijk) -> float:
        return abs(float(np.asarray(ijk, float)[::-1][self.fixed]) - self.index)

    def mask_px(self, mask_kji: np.ndarray) -> np.ndarray:
        plane = Image.fromarray(self.cut(mask_kji).astype(np.uint8) * 255).resize(self.size, Image.NEAREST)
        return np.asarray(plane) > 0


def overlay_mask(view: SliceView, mask_kji: np.ndarray, rgb, alpha: float = 0.4, outline_only: bool = False,
                 dotted: bool = False) -> None:
    mask = view.mask_px(mask_kji)
    if not mask.any():
        return
    pixels = np.asarray(view.image).astype(np.float32)
    colour = np.array(rgb, np.float32)
    if not outline_only:
        pixels[mask] = (1 - alpha) * pixels[mask] + alpha * colour
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    if dotted:
        yy, xx = np.nonzero(edge)
        keep = ((yy // 3 + xx // 3) % 2) == 0
        edge = np.zeros_like(edge)
        edge[yy[keep], xx[keep]] = True
    pixels[edge] = colour
    view.image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def draw_box(view: SliceView, box_ijk: np.ndarray, rgb, label: str | None = None) -> bool:
    """The ROI's cut through this plane (nothing when the plane misses the box)."""
    lo, hi = np.asarray(box_ijk, float)
    fixed_ijk = 2 - view.fixed
    if not lo[fixed_ijk] - 0.5 <= view.index <= hi[fixed_ijk] + 0.5:
        return False
    corners = [view.to_px(lo - 0.5), view.to_px(hi + 0.5)]
    x0, x1 = sorted(c[0] for c in corners)
    y0, y1 = sorted(c[1] for c in corners)
    x0, x1 = x0 - 0.5 * view.scale[0], x1 - 0.5 * view.scale[0]
    y0, y1 = y0 - 0.5 * view.scale[1], y1 - 0.5 * view.scale[1]
    draw = ImageDraw.Draw(view.image)
    draw.rectangle([x0, y0, x1, y1], outline=tuple(rgb), width=3)
    if label:
        text_font = font(13)
        width = draw.textlength(label, font=text_font)
        draw.rectangle([x0, y0 - 17, x0 + width + 6, y0], fill=tuple(rgb))
        draw.text((x0 + 3, y0 - 16), label, fill=(0, 0, 0), font=text_font)
    return True


def draw_points(view: SliceView, points_ijk: np.ndarray, labels, rgb, near_voxels: float = 1.0) -> None:
    """Filled dots for points on (or next to) this plane, rings for points projected from other slices."""
    draw = ImageDraw.Draw(view.image)
    text_font = font(12)
    for point, label in zip(points_ijk, labels):
        x, y = view.to_px(point)
        on_plane = view.distance_voxels(point) <= near_voxels
        r = 5
        if on_plane:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rgb), outline=(255, 255, 255), width=1)
        else:
            draw.ellipse([x - r, y - r, x + r, y + r], outline=tuple(rgb), width=2)
        if label:
            draw.text((x + 7, y - 7), label, fill=(255, 255, 120), font=text_font, stroke_width=2,
                      stroke_fill=(0, 0, 0))


def titled(image: Image.Image, title: str, width: int | None = None) -> Image.Image:
    title_font = font(15)
    width = width or image.width
    out = Image.new("RGB", (width, image.height + 26), (24, 24, 28))
    ImageDraw.Draw(out).text((6, 5), title, fill=(235, 235, 235), font=title_font)
    out.paste(image, (0, 26))
    return out


def text_panel(lines, width: int, height: int, title: str) -> Image.Image:
    panel = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(panel)
    draw.text((8, 6), title, fill=(235, 235, 235), font=font(15))
    y = 34
    body = font(13)
    for line in lines:
        colour = (235, 235, 235)
        if isinstance(line, tuple):
            line, colour = line
        for chunk in _wrap(draw, line, body, width - 16):
            draw.text((8, y), chunk, fill=colour, font=body)
            y += 18
    return panel


def _wrap(draw, text: str, text_font, width: int) -> list[str]:
    words, lines, current = text.split(" "), [], ""
    for word in words:
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=text_font) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = "  " + word
    return lines + [current]


def row(images, caption: str, path: Path) -> Path:
    gap = 6
    height = max(image.height for image in images)
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, height + 30), (12, 12, 14))
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + gap
    ImageDraw.Draw(canvas).text((8, height + 7), caption, fill=(200, 200, 200), font=font(13))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


# --- scene helpers ----------------------------------------------------------------------------------------------------
def ijk_of_ras(volume, points_ras) -> np.ndarray:
    from MedFoundationSegLogic import mrml_bridge

    return volume.ijk_from_lps(mrml_bridge.lps_from_ras(points_ras))


def centre_ijk(mask_kji: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask_kji)
    return np.array([np.median(i), np.median(j), np.median(k)]).round().astype(int)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


# --- the three jobs ---------------------------------------------------------------------------------------------------
def job_template(scene, template_ph, out: Path):
    """Job 1: a template from 6 guided clicks per structure (MedLAMLocalize, 'Templates' section)."""
    from MedFoundationSegLib.core import terminology
    from MedFoundationSegLib.localize.templates import structure_points_from_mask
    from MedFoundationSegLogic import mrml_bridge
    from MedLAMLocalizeLogic import POINT_LABELS, MedLAMLocalizeLogic, guide_point_list
    from mrml_scene import add_volume_node

    template_node = add_volume_node(scene, template_ph.image, "template CT")
    logic = MedLAMLocalizeLogic(scene)
    prompts_seen = []
    points_nodes = {}
    for name, rgb in STRUCTURES.items():
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{name} extreme points")
        clicks_ras = mrml_bridge.ras_from_lps(structure_points_from_mask(template_ph.labels, template_ph.mask(name)))
        prompt = guide_point_list(node)
        for point in clicks_ras:  # what the user's 6 clicks produce, one at a time
            if name == "liver":
                prompts_seen.append(prompt)
            node.AddControlPoint(*map(float, point))
            prompt = guide_point_list(node)
        if name == "liver":
            prompts_seen.append(prompt)
        logic.add_structure(template_node, name, node, color_rgb=tuple(c / 255 for c in rgb))
        points_nodes[name] = node

    volume = mrml_bridge.volume_from_node(template_node)
    centre = centre_ijk(template_ph.mask("liver"))
    views = [SliceView(volume.array, volume.spacing_mm, "axial", centre[2]),
             SliceView(volume.array, volume.spacing_mm, "coronal", centre[1])]
    for view in views:
        for name, rgb in STRUCTURES.items():
            node = points_nodes[name]
            labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
            draw_points(view, ijk_of_ras(volume, mrml_bridge.control_points_ras(node)),
                        labels if name == "liver" else [None] * 6, rgb)
    lines = ["Panel text while placing the liver's points (from the Logic):"]
    lines += [(f"{index}. {text}", (255, 255, 160) if index < 7 else (160, 230, 160))
              for index, text in enumerate(prompts_seen, 1)]
    lines += ["", "Each placed point is renamed to the extreme it was asked for, and the next point's label is set "
              "before the click, so the slice views show which extreme comes next.", "",
              "Template set (one file):"]
    for name in STRUCTURES:
        tag = logic.terminology.get(name)
        coded = terminology.TerminologyEntry.from_tag(tag) if tag else None
        lines.append(f"  {name}: {coded.display_name} (SCT {coded.type.value})" if coded else f"  {name}: uncoded")
    images = [titled(views[0].image, f"Template CT, axial slice {centre[2]}"),
              titled(views[1].image, f"coronal slice {centre[1]}"),
              text_panel(lines, 430, views[1].image.height + 26, "Guided extreme points")]
    path = row(images, "1. Build a template: liver points labelled x-min ... z-max (filled: on this slice, ring: "
                       "on another slice); spleen and left kidney also placed.", out / "slicer_1_template.png")
    assert [points_nodes["liver"].GetNthControlPointLabel(i) for i in range(6)] == list(POINT_LABELS)
    return logic, path


def job_localize(scene, logic, query_ph, out: Path):
    """Job 2: localize the template's structures in another volume (MedLAMLocalize, 'Localize' section)."""
    from MedFoundationSegLogic import mrml_bridge
    from mrml_scene import add_volume_node

    query_node = add_volume_node(scene, query_ph.image, "query CT")
    start = time.perf_counter()
    results, nodes, choice = logic.localize(query_node)
    seconds = time.perf_counter() - start
    volume = mrml_bridge.volume_from_node(query_node)
    boxes = {name: mrml_bridge.ijk_box_from_ras_bounds(volume, mrml_bridge.roi_bounds_ras(created.roi_node),
                                                       clip=False)
             for name, created in nodes.items()}
    centre = centre_ijk(query_ph.mask("liver") | query_ph.mask("spleen"))
    kidney_k = centre_ijk(query_ph.mask("kidney_left"))[2]
    views = [SliceView(volume.array, volume.spacing_mm, "axial", kidney_k),
             SliceView(volume.array, volume.spacing_mm, "coronal", centre[1])]
    for view in views:
        for name, created in nodes.items():
            rgb = STRUCTURES[name]
            overlay_mask(view, query_ph.mask(name), (255, 255, 255), outline_only=True, dotted=True)
            draw_box(view, boxes[name], rgb, name)
            draw_points(view, ijk_of_ras(volume, mrml_bridge.control_points_ras(created.points_node)), [None] * 6,
                        rgb)
    print(f"localization: {len(results)} structures in {seconds:.1f} s ({choice.engine})")
    lines = [f"Engine: {choice.engine}. {choice.reason}", ""]
    for name, result in results.items():
        if name in nodes:
            size = np.ptp(result.box_ras_mm, axis=0)
            inside = query_ph.mask(name)
            (i0, j0, k0), (i1, j1, k1) = boxes[name]
            held = inside[max(k0, 0):k1 + 1, max(j0, 0):j1 + 1, max(i0, 0):i1 + 1].sum() / inside.sum()
            lines.append((f"{name}: found, box {size[0]:.0f} x {size[1]:.0f} x {size[2]:.0f} mm, holds "
                          f"{100 * held:.0f}% of the true organ", (160, 230, 160)))
        else:
            lines.append((f"{name}: absent ({result.details.get('reason', 'outside the volume')}), no box",
                          (255, 190, 120)))
    lines += ["", "Each found structure becomes an editable ROI box and a 6-point list in the scene, tagged with "
              "its structure, engine, confidence and standard terminology; 'Send box to MedFoundationSeg' hands "
              "the box on."]
    images = [titled(views[0].image, f"Query CT (another phantom), axial {kidney_k}"),
              titled(views[1].image, f"coronal {centre[1]}"),
              text_panel(lines, 430, views[1].image.height + 26, "Localize (results table)")]
    path = row(images, "2. Localize: ROI boxes and predicted extreme points read back from the scene's nodes; "
                       "dotted white: true organ outline (phantom).", out / "slicer_2_localize.png")
    return query_node, nodes, path


def job_segment(scene, query_node, nodes, query_ph, model: str, out: Path):
    """Job 3: MedFoundationSeg: segment inside the liver box, propagate the spleen from one slice, refine."""
    from MedFoundationSegLib.core import terminology
    from MedFoundationSegLib.workflow.options import Options
    from MedFoundationSegLogic import mrml_bridge
    from MedFoundationSegLogic.logic import MedFoundationSegLogic

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(query_node)
    logic = MedFoundationSegLogic(scene, Options(model=model, device="cpu"))
    volume = mrml_bridge.volume_from_node(query_node)

    start = time.perf_counter()
    liver = logic.run(logic.prepare_segment_in_roi(query_node, nodes["liver"].roi_node, segmentation),
                      segment_name="liver", color_rgb=tuple(c / 255 for c in STRUCTURES["liver"]))
    liver_seconds = time.perf_counter() - start
    liver_mask = mrml_bridge.segment_mask_kji(segmentation, liver.segment_id, query_node)

    spleen_truth = query_ph.mask("spleen")
    seed_k = int(np.argmax(spleen_truth.sum(axis=(1, 2))))
    spleen_id = segmentation.GetSegmentation().AddEmptySegment("", "spleen", [c / 255 for c in STRUCTURES["spleen"]])
    seed = np.zeros_like(spleen_truth)
    seed[seed_k] = spleen_truth[seed_k]  # the user's drawing on one slice
    mrml_bridge.write_segment_mask_kji(segmentation, spleen_id, seed, query_node)
    start = time.perf_counter()
    prepared = logic.prepare_propagation(query_node, segmentation, spleen_id, seed_k)
    result = prepared.compute(progress=None, cancelled=None)
    logic.apply(prepared, result)
    spleen_seconds = time.perf_counter() - start
    spleen_mask = mrml_bridge.segment_mask_kji(segmentation, spleen_id, query_node)
    stop_reasons = result.report.get("stop_reasons") or {}

    centre = centre_ijk(query_ph.mask("liver") | spleen_truth)
    views = [SliceView(volume.array, volume.spacing_mm, "axial", seed_k),
             SliceView(volume.array, volume.spacing_mm, "coronal", centre[1])]
    liver_box = mrml_bridge.ijk_box_from_ras_bounds(volume, mrml_bridge.roi_bounds_ras(nodes["liver"].roi_node),
                                                    clip=False)
    for view in views:
        overlay_mask(view, liver_mask, STRUCTURES["liver"])
        overlay_mask(view, spleen_mask, STRUCTURES["spleen"])
        for name in ("liver", "spleen"):
            overlay_mask(view, query_ph.mask(name), (255, 255, 255), outline_only=True, dotted=True)
        draw_box(view, liver_box, STRUCTURES["liver"], "liver box")
    coronal = views[1]
    y = coronal.to_px([0, 0, seed_k])[1]
    ImageDraw.Draw(coronal.image).line([(0, y), (coronal.size[0], y)], fill=(255, 255, 120), width=1)
    ImageDraw.Draw(coronal.image).text((4, y - 16), "spleen drawn on this slice only", fill=(255, 255, 120),
                                       font=font(12), stroke_width=2, stroke_fill=(0, 0, 0))

    tag = terminology.get_segment_terminology(segmentation.GetSegmentation().GetSegment(liver.segment_id))
    prompts = mrml_bridge.get_segment_prompts(segmentation, liver.segment_id)
    reasons = [f"  {where}: {why}" for where, why in list(stop_reasons.items())[:4]] if isinstance(
        stop_reasons, dict) else [f"  {stop_reasons}"]
    print(f"segment in box (liver, {model}): {liver_seconds:.1f} s; propagate (spleen): {spleen_seconds:.1f} s")
    liver_dice = dice(liver_mask, query_ph.mask("liver"))
    lines = [(f"Segment in box (liver, {model}): {liver.voxels_written} voxels, Dice {liver_dice:.2f} vs the "
              "phantom truth (the box from registration cuts off part of the liver)", (160, 230, 160)),
             (f"Propagate from slice {seed_k} (spleen): {int(spleen_mask.any(axis=(1, 2)).sum())} slices, Dice "
              f"{dice(spleen_mask, spleen_truth):.2f} vs the truth", (160, 230, 160)),
             "Stop reasons shown in the panel:"] + reasons + [
             "",
             f"Segment tags of 'liver': action '{prompts.get('action')}', model '{prompts.get('model')}', "
             f"box {prompts.get('box_ijk')} (ijk); TerminologyEntry "
             f"{terminology.TerminologyEntry.from_tag(tag).display_name if tag else 'none'} (from the localized box).",
             "Each action wrote only its own segment and is one undo step; 'Re-run' rebuilds it from these tags."]
    images = [titled(views[0].image, f"Query CT, axial {seed_k} (the drawn slice)"),
              titled(views[1].image, f"coronal {centre[1]}"),
              text_panel(lines, 430, views[1].image.height + 26, "MedFoundationSeg")]
    path = row(images, "3. Segment: liver from its localized box (MedLAMLocalize, registration engine), spleen "
                       "propagated both ways from one drawn slice; dotted white: phantom truth.",
               out / "slicer_3_segment.png")
    return logic, segmentation, path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument("--model", default="litemedsam")
    args = parser.parse_args(argv)

    from MedFoundationSegLib.sampledata.phantoms import make_phantom
    from mrml_scene import mrml_env

    scene, _ = mrml_env()
    template_ph, query_ph = make_phantom(1, SHAPE_KJI), make_phantom(2, SHAPE_KJI)
    logic, first = job_template(scene, template_ph, args.out)
    query_node, nodes, second = job_localize(scene, logic, query_ph, args.out)
    _, _, third = job_segment(scene, query_node, nodes, query_ph, args.model, args.out)
    for path in (first, second, third):
        print(f"{path}  {path.stat().st_size / 1024:.0f} KB")
    print("load average (1, 5, 15 min):", " ".join(f"{x:.2f}" for x in __import__("os").getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
