"""SlicePredictor: box/point prompts on the 2D slices of a 3D volume, with a bounded cache of slice embeddings.

The image encoder costs ~100x the prompt decoder, so each slice is encoded at most once per predictor: several
structures, repeated prompts and interactive corrections on a slice reuse its cached embedding. Slices are taken
along one axis of the (z, y, x) array; prompts and masks live in that slice's own pixel frame (x = column, y = row).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from MedFoundationSegLib.core.geometry import SLICE_FRAMES
from MedFoundationSegLib.core.progress import (
    Cancelled,  # the shared one: the worker and the batch recognise it as a cancel
)
from MedFoundationSegLib.runtime.compiled_decoder import CompiledDecoder, compile_wanted
from MedFoundationSegLib.runtime.encoder_runtime import EncoderRuntime, select_device
from MedFoundationSegLib.runtime.precision_escalation import (
    ESCALATION_ERROR_SCALE,
    ESCALATION_MAX_EXPECTED_LOSS,
    expected_dice,
)
from MedFoundationSegLib.runtime.retained_heap import retained_heap
from MedFoundationSegLib.segment.embedding_cache import EmbeddingCache
from MedFoundationSegLib.segment.intensity import Window, apply_window, check_image, resolve_window
from MedFoundationSegLib.segment.preprocessing import (
    Preprocessing,
    PreprocessingError,
    preprocessing_for,
    slice_transform,
    slices_to_input,
)
from MedFoundationSegLib.segment.prompt_checks import (  # noqa: F401 - PredictorError is part of this module's API
    LOW_RES_SIZE,
    PredictorError,
    as_float_array,
    check_boxes,
    check_mask_input,
    check_points,
)

DEFAULT_CACHE_BYTES = 512 * 1024**2
# Half precision keeps 11 significant bits; embeddings are O(1), far from fp16's 65504 limit (checked per slice).
FP16_SAFE_ABS = 6.0e4


Progress = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


@dataclasses.dataclass
class SlicePrediction:
    """Masks for N prompts with C candidates each (C = 1, or 3 with multimask output)."""

    masks: np.ndarray  # bool (N, C, H, W) on the slice grid
    iou: np.ndarray  # float32 (N, C): the decoder's predicted IoU of each mask
    low_res_logits: np.ndarray  # float32 (N, C, 256, 256): feed one back as `mask_input` to refine
    probability: np.ndarray | None = None  # float32 (N, C, H, W) sigmoid of the logits, when asked for

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) masks and (N,) IoU of the candidate with the highest predicted IoU per prompt."""
        pick = self.iou.argmax(axis=1)
        rows = np.arange(len(pick))
        return self.masks[rows, pick], self.iou[rows, pick]


def clip_box_to_slice(box_xyxy, slice_hw: tuple[int, int]) -> np.ndarray:
    """Clip a (grown) box to the slice; for callers that enlarge boxes and accept losing what falls outside."""
    box = as_float_array(box_xyxy, "box").reshape(4)
    height, width = slice_hw
    return np.array([np.clip(box[0], 0, width - 1), np.clip(box[1], 0, height - 1),
                     np.clip(box[2], 0, width - 1), np.clip(box[3], 0, height - 1)])


def load_model(name: str, weights="registry", device: str | torch.device = "cpu") -> nn.Module:
    """A SAM-family model from the registry; unknown names and missing weights raise clear errors."""
    preprocessing_for(name)  # UnknownModelError for names that are not slice models
    from MedFoundationSegLib.models.build import build_model

    return build_model(name, weights=weights, device=str(device))


class SlicePredictor:
    """Encode slices of one volume along one axis lazily, cache their embeddings, decode prompts into masks.

    volume: a Volume or a (z, y, x) array (then give ``spacing_mm`` along x, y, z for anisotropic data).
    model: a registry name ("litemedsam", "mobilesam", ...) or an already built model (then name its preprocessing
    with ``preprocessing``). window: see intensity.resolve_window ("auto", a preset, {level, width}, ...).
    precision: "auto" (bf16 where the hardware is native at it, else fp16 on GPUs and fp32), "fp32", "bf16", "fp16".
    cache_bytes: memory budget of the embedding cache (2 MiB per slice for the 256x64x64 fp16 embeddings).
    optimize: fold BatchNorm into convolutions, channels-last, native precision (a passed model object is converted
    in place). compile: also torch.compile the encoder (one fixed batch shape): faster per slice once compiled, but
    the compilation takes minutes in each new process, so it pays off for batch/propagation work, not for one
    interactive slice. escalate: when the encoder runs in reduced precision, re-encode in fp32 any slice whose mask
    the rounding is expected to move (ESCALATION_ERROR_SCALE); its fp32 embedding replaces the fast one in the cache.
    Off by default: it re-encodes many slices for little change (figures in the README's benchmark page).
    """

    def __init__(self, volume, model: str | nn.Module = "litemedsam", *, spacing_mm=None, axis: str = "axial",
                 window="auto", device: str | torch.device = "auto", weights="registry", precision: str = "auto",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, batch_size: int | None = None,
                 preprocessing: str | Preprocessing | None = None, optimize: bool = True,
                 compile: bool = False, keep_physical_aspect: bool = True, escalate: bool = False):
        array = getattr(volume, "array", volume)
        if spacing_mm is None:
            spacing_mm = getattr(volume, "spacing_mm", (1.0, 1.0, 1.0))
        try:
            array = check_image(array, "volume")
        except ValueError as error:
            raise PredictorError(str(error)) from error
        if array.ndim != 3 or min(array.shape) < 1:
            raise PredictorError(f"volume must be a non-empty 3D (z, y, x) array; got shape {array.shape}")
        spacing = as_float_array(spacing_mm, "spacing_mm").reshape(-1)
        if spacing.size != 3 or (spacing <= 0).any():
            raise PredictorError(f"spacing_mm must be 3 positive values along (x, y, z); got {spacing_mm}")
        if axis not in SLICE_FRAMES:
            raise PredictorError(f"unknown axis {axis!r}; use one of {', '.join(SLICE_FRAMES)}")
        self.array = array
        self.spacing_mm = tuple(float(s) for s in spacing)
        self.axis = axis
        self.window: Window = resolve_window(window, array)

        self.device = select_device(device)
        if isinstance(model, str):
            self.model_name = model
            self.preprocessing = preprocessing_for(model)
            self.model = load_model(model, weights=weights, device=self.device)
        else:
            if preprocessing is None:
                raise PredictorError("a model object needs `preprocessing` (a registry model name or a Preprocessing)")
            self.model_name = preprocessing if isinstance(preprocessing, str) else "custom"
            self.model = model.to(self.device)
        if preprocessing is not None:
            self.preprocessing = (preprocessing_for(preprocessing) if isinstance(preprocessing, str)
                                  else preprocessing)
        self.model.eval()
        self.runtime = EncoderRuntime(self.model.image_encoder, self.device, precision if optimize else "fp32",
                                      batch_size=batch_size, fold_bn=optimize, channels_last=optimize,
                                      compile=compile, keep_exact=escalate, band_stem=optimize)

        kept = SLICE_FRAMES[axis].array_axis
        self.slice_hw = tuple(int(n) for i, n in enumerate(array.shape) if i != kept)
        self.num_slices = int(array.shape[kept])
        pixel_spacing_yx = self._pixel_spacing_yx() if keep_physical_aspect else None
        self.transform = slice_transform(self.slice_hw, self.preprocessing, pixel_spacing_yx)
        self.cache = EmbeddingCache(cache_bytes)
        self.slices_encoded = 0
        self.escalate = bool(escalate) and self.runtime.reduced_precision
        self.escalation_error_scale = ESCALATION_ERROR_SCALE.get(self.runtime.precision, 0.0)
        self.slices_escalated = 0  # fp32 re-encodings done by the escalation rule
        # On a CPU that does bf16 natively the mask decoder runs in the encoder's bf16 too: it is what a correction
        # spends its time on (once per slice it walks), and its masks stay within a fraction of a percent of fp32's.
        self.decoder_bf16 = self.device.type == "cpu" and self.runtime.precision == "bf16"
        self._exact: set[int] = set()  # cached slices whose embedding came from the fp32 encoder
        self._lock = threading.RLock()
        self.decoder = CompiledDecoder(self.model.mask_decoder, self._warm_up_decoder,
                                       enabled=optimize and compile_wanted(self.device))
        self.decoder_override: nn.Module | None = None  # a structure's adapted decoder (``decoding_with``)

    @contextlib.contextmanager
    def decoding_with(self, decoder: nn.Module | None):
        """Predict with ``decoder`` (segment/decoder_adaptation.py) instead of the model's own inside the block."""
        previous, self.decoder_override = self.decoder_override, decoder
        try:
            yield self
        finally:
            self.decoder_override = previous

    # --- geometry -----------------------------------------------------------------------------------------------
    def _pixel_spacing_yx(self) -> tuple[float, float]:
        spacing_x, spacing_y, spacing_z = self.spacing_mm
        return {"axial": (spacing_y, spacing_x), "coronal": (spacing_z, spacing_x),
                "sagittal": (spacing_z, spacing_y)}[self.axis]

    def _check_index(self, index) -> int:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise PredictorError(f"slice index must be an integer; got {index!r}")
        if not 0 <= int(index) < self.num_slices:
            raise PredictorError(f"slice index {index} is outside the volume's {self.num_slices} {self.axis} slices "
                                 f"(0..{self.num_slices - 1})")
        return int(index)

    def slice_image(self, index: int) -> np.ndarray:
        """The raw 2D slice (rows, columns) of the volume at ``index`` along the predictor's axis."""
        index = self._check_index(index)
        return np.take(self.array, index, axis=SLICE_FRAMES[self.axis].array_axis)

    def windowed_slice(self, index: int) -> np.ndarray:
        """The uint8 slice the model's preprocessing starts from (the raw slice through the intensity window)."""
        return apply_window(self.slice_image(index), self.window)

    # --- encoding -----------------------------------------------------------------------------------------------
    def set_window(self, window) -> None:
        """Change the intensity window; cached embeddings were computed with the old one and are dropped."""
        new = resolve_window(window, self.array)
        with self._lock:
            if new != self.window:
                self.window = new
                self.cache.clear()
                self._exact.clear()

    @staticmethod
    def _storage_form(embedding: torch.Tensor) -> torch.Tensor:
        """CPU copy in fp16 when it fits fp16's range, else fp32. Every embedding, cached or not, takes this form,
        so a prediction never depends on whether its slice came from the cache."""
        embedding = embedding.detach().to("cpu", torch.float32)
        if embedding.abs().max().item() < FP16_SAFE_ABS:
            return embedding.to(torch.float16)
        return embedding

    def _input_images(self, indices: list[int]) -> torch.Tensor:
        axis = SLICE_FRAMES[self.axis].array_axis
        slices = apply_window(np.take(self.array, indices, axis=axis), self.window)
        if axis:  # np.take along y or x puts the slice axis in place; bring it to the front
            slices = np.moveaxis(slices, axis, 0)
        return slices_to_input(slices, self.transform, self.preprocessing)

    def _encode(self, indices: list[int]) -> list[torch.Tensor]:
        embeddings = self.runtime(self._input_images(indices))
        self.slices_encoded += len(indices)
        self._exact.difference_update(indices)  # an evicted fp32 embedding comes back as a fast one
        return [self._storage_form(embeddings[i: i + 1]) for i in range(len(indices))]

    def _encode_exact(self, index: int) -> torch.Tensor:
        """fp32 embedding of one slice (escalation), cached in place of the fast one."""
        embedding = self._storage_form(self.runtime.exact(self._input_images([index])))
        self.slices_escalated += 1
        if self.cache.put(index, embedding):
            self._exact.add(index)
        return embedding

    def _needs_escalation(self, index: int, logits: torch.Tensor) -> bool:
        """True when the slice's embedding is a fast one and some mask's expected Dice loss exceeds the margin."""
        if not self.escalate or index in self._exact:
            return False
        expected = expected_dice(logits, self.preprocessing.mask_threshold, self.escalation_error_scale)
        return bool((expected < 1.0 - ESCALATION_MAX_EXPECTED_LOSS).any())

    def embedding(self, index: int) -> torch.Tensor:
        """(1, C, h, w) embedding of one slice: from the cache, or encoded now (and cached if the budget allows)."""
        index = self._check_index(index)
        with self._lock:
            cached = self.cache.get(index)
            if cached is not None:
                return cached
            (embedding,) = self._encode([index])
            self.cache.put(index, embedding)
            return embedding

    def is_encoded(self, index: int) -> bool:
        """Whether slice ``index``'s embedding is at hand (``embedding`` returns it without encoding)."""
        with self._lock:
            return self._check_index(index) in self.cache

    @property
    def encodes_one_slice_per_call(self) -> bool:
        """True where the encoder takes one slice per call (CPU): there encoding slices as a walk reaches them costs
        nothing against encoding them in batches first."""
        return self.runtime.batch_size == 1

    def heap_scope(self):
        """The context a walk that encodes as it goes runs in: the encoder's own (on CPU freed activations stay in the
        heap between its slices, as between the batches of ``encode_slices``)."""
        return self.runtime.heap_scope()

    def encode_range(self, first: int, last: int, *, progress: Progress | None = None,
                     cancelled: CancelCheck | None = None) -> int:
        """Encode slices first..last (inclusive, like the project's voxel boxes) in batches; returns how many were
        newly encoded. Already cached slices are skipped; progress/cancel are honoured between batches."""
        first, last = self._check_index(first), self._check_index(last)
        if last < first:
            raise PredictorError(f"encode_range needs first <= last; got {first}..{last}")
        return self.encode_slices(range(first, last + 1), progress=progress, cancelled=cancelled)

    def encode_slices(self, indices, *, progress: Progress | None = None, cancelled: CancelCheck | None = None) -> int:
        """Encode the given slices (any order, e.g. every k-th) in batches, as encode_range does for a range."""
        indices = sorted({self._check_index(i) for i in indices})
        with self._lock, retained_heap():  # each batch reuses the last one's freed activations (no page faults)
            todo = [i for i in indices if i not in self.cache]
            step = max(1, self.runtime.batch_size)
            for done in range(0, len(todo), step):
                if cancelled is not None and cancelled():
                    raise Cancelled(f"encoding cancelled after {done} of {len(todo)} slices")
                if progress is not None:
                    progress(done / len(todo), f"encoding {self.axis} slices ({done}/{len(todo)})")
                batch = todo[done: done + step]
                embeddings = self._encode(batch)
                if done == 0 and self.cache.size_of(embeddings[0]) * len(todo) > self.cache.budget_bytes:
                    warnings.warn(f"encoding {len(todo)} slices needs "
                                  f"{self.cache.size_of(embeddings[0]) * len(todo) / 2**20:.0f} MiB of cache but the "
                                  f"budget is {self.cache.budget_bytes / 2**20:.0f} MiB; early slices will be evicted",
                                  RuntimeWarning, stacklevel=2)
                for index, embedding in zip(batch, embeddings):
                    self.cache.put(index, embedding)
            if progress is not None and todo:
                progress(1.0, f"encoded {len(todo)} {self.axis} slices")
            return len(todo)

    # --- prompts ------------------------------------------------------------------------------------------------
    def predict(self, index: int, boxes=None, points=None, point_labels=None, mask_input=None, *,
                multimask: bool = False, with_probability: bool = False, box_frame: str = "slice") -> SlicePrediction:
        """Masks for one or many prompts on slice ``index``. boxes: (x0, y0, x1, y1) or (N, 4) in the slice's pixel
        frame. points: (P, 2) shared by all prompts or (N, P, 2), with point_labels 1 (foreground) / 0 (background).
        mask_input: a previous low_res_logits (256, 256) or (N, 1, 256, 256). multimask: three candidates per prompt
        instead of one. box_frame "input": the boxes are already in the model's input frame (a procedure that computes
        them there, as the official LiteMedSAM 3D inference does)."""
        index = self._check_index(index)
        if boxes is None and points is None:
            raise PredictorError("give at least a box or points to predict a mask")
        if box_frame not in ("slice", "input"):
            raise PredictorError(f"box_frame must be 'slice' or 'input'; got {box_frame!r}")
        if boxes is None:
            box_array = None
        elif box_frame == "input":
            box_array = as_float_array(boxes, "boxes").reshape(-1, 4)
            if np.any(box_array < 0) or np.any(box_array > self.transform.input_size):
                raise PredictorError(f"input-frame boxes must lie in 0..{self.transform.input_size}; got "
                                     f"{box_array.tolist()}")
        else:
            box_array = check_boxes(boxes, self.slice_hw, self.axis)
        count = None if box_array is None else len(box_array)
        point_arrays = check_points(points, point_labels, count, self.slice_hw, self.axis) if points is not None else None
        if count is None:
            count = point_arrays[0].shape[0]
        masks_in = check_mask_input(mask_input, count) if mask_input is not None else None

        embedding = self.embedding(index)
        prompts = (box_array, point_arrays, masks_in, multimask, box_frame)
        low_res, iou, logits = self._decode(embedding, *prompts)
        if self._needs_escalation(index, logits):
            with self._lock:
                low_res, iou, logits = self._decode(self._encode_exact(index), *prompts, exact=True)
        with torch.inference_mode():
            masks = (logits > self.preprocessing.mask_threshold).cpu().numpy()
            probability = torch.sigmoid(logits).cpu().numpy().astype(np.float32) if with_probability else None
        return SlicePrediction(masks=masks, iou=iou.float().cpu().numpy(), low_res_logits=low_res.cpu().numpy(),
                               probability=probability)

    def _decode(self, embedding, box_array, point_arrays, masks_in, multimask, box_frame="slice", *,
                exact: bool = False, decoder: nn.Module | None = None):
        """Prompt encoder + mask decoder on one embedding: (low-res logits, predicted IoU, slice-grid logits), in fp32
        when ``exact`` (an escalated slice) or where the decoder is not run in bf16."""
        decoder_device = next(self.model.mask_decoder.parameters()).device
        transform = self.transform
        with torch.inference_mode():
            box_tensor = point_tuple = None
            if box_array is not None:
                in_frame = box_array if box_frame == "input" else transform.boxes_to_input(box_array)
                box_tensor = torch.as_tensor(in_frame, dtype=torch.float32, device=decoder_device)
            if point_arrays is not None:
                coords = torch.as_tensor(transform.points_to_input(point_arrays[0]), dtype=torch.float32,
                                         device=decoder_device)
                point_tuple = (coords, torch.as_tensor(point_arrays[1], device=decoder_device))
            sparse, dense = self.model.prompt_encoder(
                points=point_tuple, boxes=box_tensor,
                masks=None if masks_in is None else masks_in.to(decoder_device))
            image_pe = self.model.prompt_encoder.get_dense_pe()  # prompt encodings stay fp32 (sin/cos of coordinates)
            if decoder is None:
                decoder = self.decoder_override or self.decoder.for_call(sparse.shape[0], multimask, exact)
            # No autocast cache: a cache is freed under a lock that then waits for the GIL, which deadlocked against
            # the background compilation's warm-up decoding under autocast at the same time.
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.decoder_bf16 and not exact,
                                cache_enabled=False):
                low_res, iou = decoder(
                    image_embeddings=embedding.to(decoder_device, torch.float32).contiguous(), image_pe=image_pe,
                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
            low_res = low_res.float()
            return low_res, iou, transform.logits_to_slice(low_res)

    def _warm_up_decoder(self, decoder: nn.Module) -> list[torch.Tensor]:
        """Decode through ``decoder`` as ``predict`` does, on a fixed random embedding, with the prompts a session sends
        (a box; a box, points and a mask prompt): the compiled decoder then serves them; returns the low-res logits."""
        encoder, logits = self.model.prompt_encoder, []
        embedding = torch.randn((1, encoder.embed_dim, *encoder.image_embedding_size),
                                generator=torch.Generator().manual_seed(0)).to(torch.float16)
        height, width = self.slice_hw
        box = check_boxes([0, 0, width - 1, height - 1], self.slice_hw, self.axis)
        for with_mask in (False, True):
            masks = check_mask_input(np.zeros((LOW_RES_SIZE, LOW_RES_SIZE), np.float32), 1) if with_mask else None
            for count in (0, 1, 2):
                points = check_points([[width / 2, height / 2]] * count, [1] * count, 1, self.slice_hw,
                                      self.axis) if count else None
                logits.append(self._decode(embedding, box, points, masks, False, decoder=decoder)[0])
        return logits

    def mask_to_prompt(self, mask_hw: np.ndarray) -> np.ndarray:
        """A bool slice mask -> (256, 256) low-res logits, to prompt with an edited or propagated mask."""
        try:
            return self.transform.slice_mask_to_low_res(mask_hw, LOW_RES_SIZE)
        except PreprocessingError as error:
            raise PredictorError(str(error)) from error
