"""Running an image encoder fast on whatever the machine has: device choice, precision, graph tweaks, OOM fallback.

The encoder is >95 % of a slice prediction's cost, so this is where speed is won; masks must not change, so every
speed-up here is one that was measured to keep slice masks at Dice >= 0.98 against plain fp32
(benchmarks/bench_slice_predictor.py).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from functools import lru_cache

import torch
from torch import nn

from MedFoundationSegLib.runtime.retained_heap import retained_heap

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# CPU: stem row bands per image of a batch (TinyViT). 4 bands keep LiteMedSAM's and MobileSAM's widest stage-0
# activation at 16 MB per image, under glibc's 32 MB ceiling for reusing freed memory instead of mapping it afresh:
# 0.74 s against 1.07 s per LiteMedSAM encoder call in a worker thread on this project's 2-core CPU, same numbers.
STEM_BANDS_PER_IMAGE = 4
# Set on an encoder whose weights a CPU bf16 runtime converted in place: its fp32 values are gone for good.
ROUNDED_TO_BF16 = "_medfoundationseg_rounded_to_bf16"


class DeviceError(ValueError):
    """An unknown or unavailable device or precision was asked for."""


def select_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if isinstance(device, torch.device):
        device = str(device)
    device = str(device).lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as error:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but this torch build sees no CUDA GPU")
    if chosen.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"device {device!r} asked for, but Apple MPS is not available")
    return chosen


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU computes bf16 matrix products natively (AVX-512 BF16 or AMX), so bf16 is faster, not slower."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as stream:
            flags = set()
            for line in stream:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"}) and torch.backends.mkldnn.is_available()


def resolve_precision(precision: str, device: torch.device) -> str:
    """The compute precision of the encoder: 'auto' is bf16 where the hardware does it natively, else fp16/fp32."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise DeviceError("fp16 is not supported for the encoder on CPU; use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def fold_batchnorm(module: nn.Module) -> int:
    """Replace every eval-mode conv+BatchNorm2d pair by one Conv2d with the BN folded in; returns the count.

    Two layouts are recognised: a block whose only children are a conv ``c`` and a BN ``bn`` (TinyViT's Conv2d_BN,
    whatever its forward does to compute bn(c(x))), replaced as a whole; and a conv directly followed by a BN in an
    nn.Sequential. Same function up to rounding, but the folded weights are computed once, not on every call, and
    the convolution can be pre-packed by oneDNN.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def conv_bn_pair(conv, norm) -> bool:
        return isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and not norm.training

    folded = 0
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            grandchildren = dict(child.named_children()) if child is not None else {}
            if set(grandchildren) == {"c", "bn"} and conv_bn_pair(grandchildren["c"], grandchildren["bn"]):
                parent._modules[name] = fuse_conv_bn_eval(grandchildren["c"], grandchildren["bn"])
                folded += 1
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            for first, second in zip(names, names[1:]):
                if conv_bn_pair(parent._modules[first], parent._modules[second]):
                    parent._modules[first] = fuse_conv_bn_eval(parent._modules[first], parent._modules[second])
                    parent._modules[second] = nn.Identity()
                    folded += 1
    return folded


def bf16_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with bf16 floating-point tensors, made without a transient fp32 copy (ViT-H: 2.5 GB)."""
    memo: dict[int, torch.Tensor] = {}
    for param in module.parameters():
        if param.is_floating_point():
            memo[id(param)] = nn.Parameter(param.detach().to(torch.bfloat16), requires_grad=False)
    for buffer in module.buffers():
        if buffer.is_floating_point():
            memo[id(buffer)] = buffer.detach().to(torch.bfloat16)
    return copy.deepcopy(module, memo)


def is_out_of_memory(error: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


class EncoderRuntime:
    """Calls ``encoder(images) -> embeddings`` in batches on the chosen device and precision.

    CUDA uses autocast (bf16 or fp16) over the fp32 weights; CPU with native bf16 runs bf16 weights (oneDNN bf16
    kernels); elsewhere fp32. With ``keep_exact`` the CPU bf16 weights are a *copy* and the fp32 encoder is kept, so
    :meth:`exact` can re-encode a slice at full precision when the predictor finds its mask too close to the
    threshold to trust the reduced precision (escalation); without it the weights are converted in place (ViT-H:
    2.5 GB less). On the CPU a TinyViT stem runs in row bands (``band_stem``, same numbers, fewer page faults). A
    CUDA out-of-memory error halves the batch and retries, and at batch 1 moves the encoder to the
    CPU with a warning: the user gets a slower result, never a crash.
    """

    def __init__(self, encoder: nn.Module, device: torch.device, precision: str = "auto", *,
                 batch_size: int | None = None, fold_bn: bool = True, channels_last: bool = True,
                 compile: bool = False, keep_exact: bool = False, band_stem: bool = True):
        self.encoder = encoder.eval()
        self.keep_exact = bool(keep_exact)
        self.device = device
        self.requested_precision = precision
        self.precision = resolve_precision(precision, device)
        # CPU: batch 1 (larger batches' activations spill the caches and run slower per slice); a GPU wants full
        # batches (benchmarks/bench_slice_predictor.py).
        self.batch_size = int(batch_size) if batch_size else (8 if device.type == "cuda" else 1)
        if self.batch_size < 1:
            raise DeviceError(f"batch_size must be >= 1; got {batch_size}")
        self.channels_last = channels_last
        self.band_stem = bool(band_stem)
        self.calls = 0  # encoder invocations (one per batch), for tests and benchmarks
        self.exact_calls = 0  # fp32 re-encodings asked for through exact()
        self.compile_seconds = 0.0  # time spent in warm-up calls that compiled a graph
        self.folded_bn = fold_batchnorm(self.encoder) if fold_bn else 0
        self._set_stem_bands()  # before _place(): a CPU bf16 copy made there inherits the bands
        self._bf16_encoder: nn.Module | None = None
        self._place()
        self.compiled = bool(compile)
        self._compiled: dict[str, nn.Module] = {}
        if self.compiled:
            # Static graphs: every fast call is padded to the full batch and exact() runs at batch 1, so a short
            # last batch or a single interactive slice never triggers a recompilation (minutes on a small CPU).
            self._compiled = {"fast": torch.compile(self._fast_module(), dynamic=False)}
            if self.reduced_precision and self.keep_exact:
                self._compiled["exact"] = torch.compile(self.encoder, dynamic=False)

    def _set_stem_bands(self) -> None:
        """Banded stem on the CPU (no huge short-lived activations); on a GPU the caching allocator makes it moot."""
        if hasattr(self.encoder, "stem_bands"):
            on_cpu = self.band_stem and self.device.type == "cpu"
            self.encoder.stem_bands = STEM_BANDS_PER_IMAGE * self.batch_size if on_cpu else 0

    @property
    def reduced_precision(self) -> bool:
        """True when the fast path does not compute in fp32 (so :meth:`exact` can differ from it)."""
        return self.precision != "fp32"

    def _place(self) -> None:
        cpu_bf16 = self.device.type == "cpu" and self.precision == "bf16"
        if getattr(self.encoder, ROUNDED_TO_BF16, False) and not (cpu_bf16 and not self.keep_exact):
            # Converting back to fp32 would give the old bf16 values, not the loaded weights: silently different masks.
            raise DeviceError("this encoder's weights were rounded to bf16 in place by an earlier bf16 runtime (built "
                              "without keep_exact); load the model again for an fp32 or escalating runtime")
        self.encoder.to(device=self.device, dtype=torch.float32)
        self._bf16_encoder = None
        if cpu_bf16 and self.keep_exact:
            self._bf16_encoder = bf16_copy(self.encoder)
        elif cpu_bf16:
            self._bf16_encoder = self.encoder.to(torch.bfloat16)
            setattr(self.encoder, ROUNDED_TO_BF16, True)
        if self.channels_last:
            for module in (self.encoder, self._bf16_encoder):
                if module is not None:
                    module.to(memory_format=torch.channels_last)

    def heap_scope(self):
        """CPU: the layers reuse each other's freed activations (no page faults, glibc); a GPU's activations live in
        its own caching allocator, so there the host heap is left alone (no mallopt/malloc_trim per call)."""
        return retained_heap() if self.device.type == "cpu" else contextlib.nullcontext()

    def _fast_module(self) -> nn.Module:
        return self._bf16_encoder if self._bf16_encoder is not None else self.encoder

    def _autocast(self, exact: bool = False):
        if exact or self.precision == "fp32" or self.device.type == "cpu":  # CPU bf16 runs on bf16 weights
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _run(self, images: torch.Tensor, exact: bool = False) -> torch.Tensor:
        count = images.shape[0]
        compiled = self._compiled.get("exact" if exact else "fast")
        full = 1 if exact else self.batch_size
        if compiled is not None and count < full:
            images = torch.cat([images, images.new_zeros((full - count, *images.shape[1:]))])
        images = images.to(self.device, non_blocking=True)
        if not exact and self._bf16_encoder is not None:
            images = images.to(torch.bfloat16)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        module = self.encoder if exact else self._fast_module()
        with torch.inference_mode(), self._autocast(exact):
            if exact:
                self.exact_calls += 1
            else:
                self.calls += 1
            if compiled is None:
                return module(images).float()
            from torch._inductor import config as inductor_config

            with inductor_config.patch(freezing=True):  # constant weights: pre-packed oneDNN kernels
                return compiled(images)[:count].float()

    def warm_up(self, input_size: int) -> None:
        """Blank calls of the fast path (and of the exact path when compiled): first-call allocations, kernel
        selection and compilation happen here; compiled warm-ups add their time to ``compile_seconds``."""
        calls, exact_calls = self.calls, self.exact_calls
        start = time.perf_counter()
        self(torch.zeros(self.batch_size, 3, input_size, input_size))
        if "exact" in self._compiled:
            self.exact(torch.zeros(1, 3, input_size, input_size))
        if self._compiled:
            self.compile_seconds += time.perf_counter() - start
        self.calls, self.exact_calls = calls, exact_calls

    def exact(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> fp32 embeddings from the fp32 weights, one image per call (escalation is rare and
        per slice); the same as ``__call__`` when the runtime is fp32 anyway."""
        if not self.reduced_precision:
            return self(images)
        if self._bf16_encoder is self.encoder:
            raise DeviceError("this encoder runtime converted its weights to bf16 in place; build it with "
                              "keep_exact=True to re-encode in fp32")
        with self.heap_scope():
            return torch.cat([self._run(images[i: i + 1], exact=True) for i in range(images.shape[0])])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 images -> (B, C, h, w) float32 embeddings (on the runtime's device)."""
        outputs = []
        start = 0
        with self.heap_scope():
            while start < images.shape[0]:
                chunk = images[start: start + self.batch_size]
                try:
                    outputs.append(self._run(chunk))
                except Exception as error:  # noqa: BLE001 - only OOM is handled, the rest re-raised
                    if not is_out_of_memory(error) or self.device.type == "cpu":
                        raise
                    self._shrink_after_oom(error)
                    continue
                start += chunk.shape[0]
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _shrink_after_oom(self, error: BaseException) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if self.batch_size > 1:
            self.batch_size = max(1, self.batch_size // 2)
            warnings.warn(f"{self.device.type} out of memory; retrying with encoder batches of {self.batch_size}",
                          RuntimeWarning, stacklevel=3)
            return
        warnings.warn(f"{self.device.type} out of memory even at batch 1 ({error}); falling back to the CPU "
                      f"(slower, same masks)", RuntimeWarning, stacklevel=3)
        self.device = torch.device("cpu")
        self.compiled, self._compiled = False, {}  # the graphs were built for the GPU
        self.precision = resolve_precision("auto" if self.requested_precision == "fp16" else self.requested_precision,
                                           self.device)
        self._set_stem_bands()  # before _place(): a CPU bf16 copy made there inherits the bands
        self._place()
