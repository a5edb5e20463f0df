"""PyTorch CUDA engine: fp16/bf16, channels-last, frozen torch.compile (CUDA graphs for small batches),
pinned host buffers, and uint8 pixels normalized on the GPU. The GPU path needs torch by nature; it
rebuilds the network from the manifest's card (timm) and the checkpoint recorded at export time."""
from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from ..artifact import Artifact
from ..errors import CvzooError

NEEDS_ARTIFACT = True  # it rebuilds the network from the checkpoint the manifest names, not from the ONNX file


def require_cuda():
    import torch
    if not torch.cuda.is_available():
        raise CvzooError("engine 'torch-cuda' needs a CUDA GPU, and none is visible here "
                         "(torch.cuda.is_available() is False); use --engine onnxruntime")
    return torch


def cuda_median_ms(fn, x, repeats: int, warmup: int) -> float:
    """Median milliseconds per call of fn(x) on the current stream, CUDA events around each call (the
    warm-up calls, which compile, are not timed)."""
    import torch
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times))


LARGE_BATCH = 64


def pixel_input(model, mean, std, dtype):
    """`model` behind the last step of preprocessing: uint8 (N, H, W, 3) RGB pixels, resized and cropped,
    become (x/255 - mean)/std in float32 (preprocess.normalize's arithmetic), then `dtype`, channels-last.
    Compiled with the network, this is one pointwise kernel on the GPU, and the host sends a quarter of
    the bytes a float32 batch takes (a 256-image 224 px batch: 38.5 MB instead of 154 MB)."""
    import torch

    class PixelInput(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, pixels):
            # NHWC memory seen as NCHW is channels-last already: no copy before the network
            x = pixels.permute(0, 3, 1, 2).to(torch.float32) / 255.0
            return self.net(((x - self.mean) / self.std).to(dtype))

    return PixelInput()


def large_batch_recipes() -> dict[str, dict]:
    """Whole-graph recipes for batch >= LARGE_BATCH, as inductor settings on top of freezing. Measured on an
    H100 none wins for every model (cuDNN-fused ReLU: ese_vovnet39b +9%, ese_vovnet19b_dw -36%; 1x1 convs on
    cuBLAS: cspresnet50 +9%, others -2..-7%), so the engine times them on the first batch of each large
    size and keeps the fastest, as a TensorRT build picks tactics."""
    from .conv_tactics import fuse_every_relu
    return {"inductor": {}, "cudnn_fused_relu": {"post_grad_custom_post_pass": fuse_every_relu()},
            "conv1x1_gemm": {"conv_1x1_as_mm": True}}


class TorchCudaEngine:
    """The recipe measured in benchmarks/gpu_torch_cuda.py: fp16 weights, channels-last, inductor
    `freezing` (weights become constants, so BatchNorm folds into the convs) with torch.compile's default
    mode; for batch >= 64 the fastest of large_batch_recipes(), timed on the first batch of that size
    (`tuning` records the times); for batch <= 8, where launch overhead dominates, CUDA graphs (mode
    "reduce-overhead") and per-conv tactics timed at compile (conv_tactics: cuDNN's fused conv-bias-ReLU,
    or cuBLAS for 1x1 convs, where faster: dla34 batch 1 0.63 -> 0.43 ms on an H100; at batch 256 those
    per-conv choices made networks up to 37% slower). max-autotune measured no faster and compiles ~40x
    longer. cuDNN autotuning (cudnn.benchmark) is switched on for the process, as timm's benchmark does.
    Input: predict/eval/bench hand it uint8 pixels (accepts_uint8), which the compiled graph normalizes;
    float32 batches still run (one compiled graph per input form)."""
    name = "torch-cuda"
    accepts_uint8 = True  # run() also takes uint8 (N, H, W, 3) pixels and normalizes them on the GPU

    def __init__(self, artifact: Artifact, threads: Optional[int] = None, dtype: Optional[str] = None,
                 small_batch_graphs: bool = True, conv_tactics: bool = True, tune_large_batches: bool = True):
        torch = require_cuda()
        from .conv_tactics import ConvTacticPass
        torch.backends.cudnn.benchmark = True
        # one compiled graph per batch size and recipe, all of one forward(): dynamo's default limit (8
        # graphs per function) would send further batch sizes to eager mode, with one warning
        dynamo = torch._dynamo.config
        limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"  # older torch
        setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
        self.artifact, self.torch, self.threads = artifact, torch, threads
        self.conv_tactics = ConvTacticPass() if conv_tactics else None  # small batches; .log: one line per conv
        # host-side copies of a batch into pinned memory run in parallel chunks (numpy releases the GIL)
        self._copiers = ThreadPoolExecutor(max_workers=min(8, threads or 8), thread_name_prefix="cvzoo-h2d")
        dtype = dtype or ("bf16" if artifact.precision == "bf16" else "fp16")  # fp16 unless built for bf16
        self.inference_precision = dtype
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
        model = source_model_of(artifact).cuda().eval().to(memory_format=torch.channels_last).to(self.dtype)
        pre = artifact.preprocessing
        # two inputs, one network: float32 NCHW (normalized on the host) or uint8 NHWC pixels (normalized here)
        self.models = {"float32": model, "uint8": pixel_input(model, pre.mean, pre.std, self.dtype).cuda()}
        # one static graph per batch size (dynamic=False): after batch 1, batch 8 would otherwise recompile
        # with symbolic shapes, which CUDA graphs then failed on (AssertionError, torch 2.11)
        self.tune_large_batches = tune_large_batches
        self.compiled = {k: torch.compile(m, dynamic=False) for k, m in self.models.items()}
        self.graphed = ({k: torch.compile(m, mode="reduce-overhead", dynamic=False) for k, m in self.models.items()}
                        if small_batch_graphs else self.compiled)
        self._buffers: dict[tuple, tuple] = {}
        self._large: dict[tuple, tuple] = {}  # (input shape, dtype) -> (compiled fn, its inductor settings)
        self.tuning: dict[int, dict] = {}     # batch -> {"chosen": recipe, "ms": {recipe: ms per batch}}
        # each engine instance on its own stream: two instances overlap one's transfers with the other's
        # compute (on the shared default stream they ran strictly one after the other)
        self.stream = torch.cuda.Stream()

    def upload(self, batch: np.ndarray):
        """Host batch -> GPU, in chunks: while the GPU copies chunk i from pinned memory, CPU threads fill the
        next chunks (a 256-image 224 px float32 batch is 154 MB; copied whole and then sent, the copies took
        longer than the network). float32 arrives as the network's dtype, channels-last; uint8 as it is."""
        torch = self.torch
        key = (batch.shape, batch.dtype.str)
        if key not in self._buffers:
            dtype = torch.from_numpy(batch[:0]).dtype
            self._buffers[key] = (torch.empty(batch.shape, dtype=dtype, pin_memory=True),
                                  torch.empty(batch.shape, dtype=dtype, device="cuda"))
        host, dev = self._buffers[key]
        # the previous call's transfers finished before it returned (its logits came back after them)
        pinned = host.numpy()
        if batch.nbytes < (4 << 20):  # small batches: one copy here; a thread hand-off costs more than it saves
            np.copyto(pinned, batch)
            dev.copy_(host, non_blocking=True)
        else:
            bounds = np.linspace(0, len(batch), min(len(batch), 8) + 1).astype(int)
            spans = list(zip(bounds, bounds[1:]))
            filled = [self._copiers.submit(np.copyto, pinned[a:b], batch[a:b]) for a, b in spans]
            for (a, b), done in zip(spans, filled):
                done.result()
                dev[a:b].copy_(host[a:b], non_blocking=True)
        return dev if batch.dtype == np.uint8 else dev.to(self.dtype, memory_format=torch.channels_last)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, 3, H, W) normalized, or uint8 (N, H, W, 3) pixels -> float32 logits."""
        kind = self.input_kind(batch)
        if kind == "float32" and batch.dtype != np.float32:
            batch = batch.astype(np.float32)
        with self.torch.cuda.stream(self.stream):
            return self._run(batch, kind)

    def input_kind(self, batch: np.ndarray) -> str:
        size = self.artifact.preprocessing.input_size
        if batch.dtype == np.uint8 and batch.ndim == 4 and batch.shape[1:] == (size, size, 3):
            return "uint8"
        if batch.dtype.kind == "f" and batch.ndim == 4 and batch.shape[1:] == (3, size, size):
            return "float32"
        raise CvzooError(f"{self.artifact.folder}: engine 'torch-cuda' takes float32 (N, 3, {size}, {size}) or uint8 "
                         f"(N, {size}, {size}, 3) batches, got {batch.dtype} {tuple(batch.shape)}")

    def _run(self, batch: np.ndarray, kind: str) -> np.ndarray:
        torch = self.torch
        x = self.upload(batch)
        small = batch.shape[0] <= 8
        # freezing is read when a shape first compiles; patched per call so other compiles in the
        # process (e.g. bench --vs-torch's plain torch.compile baseline) keep the defaults. CUDA-graph
        # trees are per thread and asserted when a bench instance's thread replaced the first one: the
        # plain (non-tree) CUDA graphs have no such tie.
        settings = {"freezing": True, "triton.cudagraph_trees": False,
                    "post_grad_custom_post_pass": self.conv_tactics if small else None}
        fn = (self.graphed if small else self.compiled)[kind]
        with torch.inference_mode():
            if batch.shape[0] >= LARGE_BATCH and self.tune_large_batches:
                fn, settings = self._large.get((x.shape, x.dtype)) or self._tune(x, kind, settings)
            with torch._inductor.config.patch(settings):
                out = fn(x)
            return out.float().cpu().numpy()  # copied out before a CUDA-graph replay can overwrite it

    def _tune(self, x, kind: str, base: dict) -> tuple:
        """Compile each large-batch recipe for this input, time it on the batch (median of 5 after 2
        warm-ups, CUDA events), keep the fastest."""
        torch = self.torch
        timed, ms = {}, {}
        for name, extra in large_batch_recipes().items():
            settings = {**base, **extra}
            # a copy: compiled on the same module, dynamo reused the first recipe's graph (measured: equal times)
            fn = (self.compiled[kind] if not extra
                  else torch.compile(copy.deepcopy(self.models[kind]), dynamic=False))
            with torch._inductor.config.patch(settings):
                timed[name], ms[name] = (fn, settings), cuda_median_ms(fn, x, repeats=5, warmup=2)
        best = min(ms, key=ms.get)
        self.tuning[int(x.shape[0])] = {"chosen": best, "ms": ms}
        self._large[(x.shape, x.dtype)] = timed[best]
        return timed[best]

    def close(self) -> None:
        self.compiled = self.graphed = self.models = None
        self._copiers.shutdown()


def source_model_of(artifact: Artifact):
    """Rebuild the PyTorch model the artifact was exported from: its checkpoint (checked against the
    recorded sha256) or the same seeded random init."""
    from ..artifact import sha256
    from ..export import source_model
    recorded = artifact.manifest.weights
    weights = None
    if recorded.path:
        weights = Path(recorded.path)
        if not weights.is_file():
            raise CvzooError(f"{artifact.folder}: engine 'torch-cuda' rebuilds the network from the checkpoint it "
                             f"was exported from, {weights}, which is not on this machine")
        if sha256(weights) != recorded.sha256:
            raise CvzooError(f"{artifact.folder}: checkpoint {weights} changed since export (sha256 differs)")
    return source_model(artifact.manifest.card, weights, artifact.preprocessing.input_size)


def load(artifact: Artifact, threads: Optional[int] = None, **options) -> TorchCudaEngine:
    return TorchCudaEngine(artifact, threads=threads, **options)
