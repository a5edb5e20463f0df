"""`cvzoo export`: model card + checkpoint -> verified ONNX artifact directory."""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union

import numpy as np

from .artifact import Artifact, atomic_dir, sha256, versions, write_manifest
from .card import ModelCard, get_card
from .datasets import demo_images
from .errors import CvzooError
from .postprocess import writable_folder
from .preprocess import preprocess_image

if TYPE_CHECKING:  # torch and timm are imported where a model is made: a cached export is found without them
    import torch

INPUT_NAME, OUTPUT_NAME = "input", "logits"
FP32_TOLERANCE = 1e-4  # max |logit difference| ORT vs torch, fp32
DEFAULT_OPSET = 17
# part of the export cache's key: raised when this module's graphs change, so that cached exports are made again
GRAPH_REVISION = 2  # 2: timm's 'same' padding as constants


@dataclass
class Verification:
    max_abs_diff_random: float
    max_abs_diff_real: float
    top1_agreement_real: float
    tolerance: float
    # Deep nets in fp32 carry rounding noise above 1e-4 in PyTorch itself (e.g. dla169: 6e-4 vs float64).
    # Then the export passes only if ORT is as close to a float64 PyTorch run as PyTorch fp32 is (+tolerance).
    torch_fp32_vs_fp64: Optional[float] = None
    ort_vs_fp64: Optional[float] = None

    @property
    def max_abs_diff(self) -> float:
        return max(self.max_abs_diff_random, self.max_abs_diff_real)

    @property
    def criterion(self) -> str:
        return "direct" if self.ort_vs_fp64 is None else "float64-reference"

    @property
    def passed(self) -> bool:
        if self.max_abs_diff <= self.tolerance:
            return True
        return self.ort_vs_fp64 is not None and self.ort_vs_fp64 <= self.torch_fp32_vs_fp64 + self.tolerance

    def as_dict(self) -> dict:
        return {**self.__dict__, "max_abs_diff": self.max_abs_diff, "criterion": self.criterion,
                "passed": self.passed}


def demo_batch(card: ModelCard, size: int) -> np.ndarray:
    pre = card.preprocessing.at_size(size)
    return np.stack([preprocess_image(p, pre) for p in demo_images()])


@contextmanager
def _static_same_padding() -> Iterator[None]:
    """timm's TF 'same' layers (Conv2dSame, MaxPool2dSame, ...) compute their padding from each input's size. An
    export has one spatial size, so while it traces, the pads are taken as constants instead of shape arithmetic
    (which onnxslim can fold into wrong logits, and which the int8 ranges pass cannot read)."""
    import importlib

    import torch.nn.functional as F
    from timm.layers.padding import pad_same_arg

    def pad_same(x, kernel_size, stride, dilation=(1, 1), value: float = 0.0):
        size = [int(s) for s in x.shape[-2:]]  # ints, not traced values: constants in the graph
        return F.pad(x, pad_same_arg(size, kernel_size, stride, dilation), value=value)

    # the modules that call it (timm.layers' namespace has functions of the same names)
    users = [importlib.import_module(f"timm.layers.{m}") for m in ("conv2d_same", "pool2d_same", "std_conv")]
    saved = [m.pad_same for m in users]
    for m in users:
        m.pad_same = pad_same
    try:
        yield
    finally:
        for m, f in zip(users, saved):
            m.pad_same = f


def _onnx_export(model: torch.nn.Module, size: int, path: Path, opset: int, batch: Union[str, int]) -> None:
    import torch
    dummy = torch.zeros(1 if batch == "dynamic" else int(batch), 3, size, size)
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch == "dynamic" else None
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad(), _static_same_padding():
        warnings.simplefilter("ignore")
        # The TorchScript exporter: mature, fast, and its graphs quantize cleanly with ORT's tools.
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
                          do_constant_folding=True)


def _simplify(path: Path) -> bool:
    try:
        import onnxslim
    except ImportError:
        return False
    logging.getLogger("onnxslim").setLevel(logging.ERROR)
    import onnx
    slim = onnxslim.slim(onnx.load(str(path)))
    onnx.save(slim, str(path))
    return True


class TorchReference:
    """PyTorch's logits on the verification inputs (seeded noise, then the shipped photos), computed once per export
    and held against every candidate graph; the float64 run is made only when a graph misses the fp32 tolerance."""

    def __init__(self, model: torch.nn.Module, card: ModelCard, size: int, batch: Union[str, int]):
        n = 2 if batch == "dynamic" else int(batch)
        rand = np.random.default_rng(0).standard_normal((n, 3, size, size), dtype=np.float32)
        real = demo_batch(card, size)
        step = len(real) if batch == "dynamic" else n  # a dynamic graph takes the photos as one batch
        self.model = model
        self.inputs = [rand] + [real[i:i + step] for i in range(0, len(real) - step + 1, step)]
        import torch
        with torch.inference_mode():
            self.fp32 = [model(torch.from_numpy(x)).numpy() for x in self.inputs]
        self._fp64: Optional[list[np.ndarray]] = None

    @property
    def fp64(self) -> list[np.ndarray]:
        if self._fp64 is None:
            import copy

            import torch
            exact = copy.deepcopy(self.model).double()
            with torch.inference_mode():
                self._fp64 = [exact(torch.from_numpy(x).double()).numpy() for x in self.inputs]
        return self._fp64


def verify_onnx(onnx_path: Path, ref: TorchReference, tolerance: float = FP32_TOLERANCE) -> Verification:
    """ONNX checker, then ONNX Runtime vs PyTorch on seeded random inputs and on real photos."""
    import onnx
    import onnxruntime as ort
    onnx.checker.check_model(str(onnx_path), full_check=True)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = [sess.run(None, {INPUT_NAME: x})[0] for x in ref.inputs]
    diffs = [float(np.abs(r - o).max()) for r, o in zip(ref.fp32, outs)]
    agree = [float((r.argmax(1) == o.argmax(1)).mean()) for r, o in zip(ref.fp32, outs)]
    v = Verification(max_abs_diff_random=diffs[0], max_abs_diff_real=max(diffs[1:], default=0.0),
                     top1_agreement_real=float(np.mean(agree[1:])) if len(agree) > 1 else 1.0, tolerance=tolerance)
    if v.max_abs_diff > tolerance:
        v.torch_fp32_vs_fp64 = max(float(np.abs(r - t).max()) for r, t in zip(ref.fp32, ref.fp64))
        v.ort_vs_fp64 = max(float(np.abs(o - t).max()) for o, t in zip(outs, ref.fp64))
    return v


def base_manifest(card: ModelCard, size: int, weights: Optional[Path], batch: Union[str, int]) -> dict:
    """Everything a runtime needs, copied out of the card, so the artifact runs without the zoo."""
    from .preprocess import vdsp_params
    pre = card.preprocessing.at_size(size)
    return {
        "name": card.name,
        "card": card.model_dump(mode="json"),
        "preprocessing": pre.model_dump(mode="json"),
        "vdsp_params": vdsp_params(pre),
        "classes": [[s, n] for s, n in zip(card.synsets, card.class_names)],
        "io": {"inputs": [{"name": INPUT_NAME, "shape": ["batch" if batch == "dynamic" else int(batch), 3, size, size],
                           "dtype": "float32", "layout": "NCHW"}],
               "outputs": [{"name": OUTPUT_NAME, "shape": ["batch" if batch == "dynamic" else int(batch),
                                                           card.num_classes], "dtype": "float32"}]},
        "weights": {"path": str(weights), "sha256": sha256(weights)} if weights else {"random_init": RANDOM_INIT_NOTE},
    }


RANDOM_INIT_NOTE = ("timm init (torch seed 0) + BatchNorm statistics from the shipped demo photos and 8 seeded N(0,1) "
                    "images (no checkpoint)")


def source_model(card: ModelCard, weights: Optional[Path], size: int, checkpoint_format: str = "auto"
                 ) -> torch.nn.Module:
    """The PyTorch model an artifact is exported from, reproducible from its manifest (the torch-cuda
    engine rebuilds it): the checkpoint's weights, or a seeded random init with BatchNorm statistics
    from the shipped photos and seeded noise."""
    import torch

    from .models import create_model, set_bn_statistics
    if weights is not None:
        return create_model(card, weights=weights, checkpoint_format=checkpoint_format)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model(card)
    photos = torch.from_numpy(demo_batch(card, size))
    noise = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    return set_bn_statistics(model, torch.cat([photos, noise]))


def export(name: Union[str, ModelCard], weights: Union[None, str, Path] = None, out: Union[None, str, Path] = None,
           size: Optional[int] = None, opset: int = DEFAULT_OPSET, batch: Union[str, int] = "dynamic",
           simplify: bool = True, force: bool = False, checkpoint_format: str = "auto") -> Artifact:
    """Export a zoo model to `out/` (model.onnx + manifest.json), verified against PyTorch: the artifact written (its
    folder and typed manifest)."""
    from .checkpoint import resolve_default_weights
    card = name if isinstance(name, ModelCard) else get_card(name)
    size = card.size_or_default(size)
    if batch != "dynamic" and int(batch) < 1:
        raise CvzooError(f"--batch must be 'dynamic' or a positive integer, got {batch}")
    out = Path(out or f"artifacts/{card.name}-{size}-fp32")
    writable_folder(out.parent, what=out)  # before the model is built and exported
    wpath = resolve_default_weights(card) if str(weights) == "default" else (Path(weights) if weights else None)
    model = source_model(card, wpath, size, checkpoint_format)
    with atomic_dir(out, force=force) as tmp:
        onnx_path = tmp / "model.onnx"
        _onnx_export(model, size, onnx_path, opset, batch)
        ref = TorchReference(model, card, size, batch)
        raw = onnx_path.read_bytes()
        simplified = simplify and _simplify(onnx_path)
        check = verify_onnx(onnx_path, ref)
        if simplified and not check.passed:  # keep the exporter's own graph if it alone verifies
            onnx_path.write_bytes(raw)
            simplified, check = False, verify_onnx(onnx_path, ref)
        if not check.passed:
            extra = (f"; vs a float64 run: ORT {check.ort_vs_fp64:.3g}, PyTorch fp32 {check.torch_fp32_vs_fp64:.3g}"
                     if check.ort_vs_fp64 is not None else "")
            raise CvzooError(f"{card.name}: export verification failed: max |Δlogit| ORT vs torch "
                             f"{check.max_abs_diff:.3g} > {FP32_TOLERANCE}{extra}")
        manifest = base_manifest(card, size, wpath, batch)
        manifest.update({
            "model_file": "model.onnx", "engine_format": "onnx", "opset": opset, "precision": "fp32",
            "export": {"exporter": "torch.onnx (TorchScript)", "simplified": simplified,
                       "verification": check.as_dict()},
            "versions": versions("cvzoo", "torch", "timm", "onnx", "onnxruntime", "onnxslim"),
        })
        (tmp / "vdsp_params.json").write_text(json.dumps(manifest["vdsp_params"], indent=2), encoding="utf-8")
        written = write_manifest(tmp, manifest)
    return Artifact(out, written)


def cached_export(card: ModelCard, weights: Optional[Path], size: int, opset: int = DEFAULT_OPSET) -> Artifact:
    """The verified fp32 export of (card, weights, size, opset) with these library versions, made once and kept in
    the cache (CVZOO_CACHE): a second build of the same model skips export and verification. A cached copy whose
    files no longer match its manifest is exported again. Builds running at once (a sweep's jobs, test workers) wait
    for the one that exports: a second export would replace the folder under the first one's readers."""
    from filelock import FileLock

    from .artifact import default_cache, is_artifact
    key = json.dumps({"card": card.model_dump(mode="json"), "weights": sha256(weights) if weights else "random",
                      "size": size, "opset": opset, "graph_revision": GRAPH_REVISION,
                      "versions": versions("cvzoo", "torch", "timm", "onnx", "onnxruntime", "onnxslim")},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    out = default_cache() / "exports" / f"{card.name}-{size}-{digest}"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.with_name(f".{out.name}.lock")):
        if is_artifact(out):
            try:
                return Artifact.load(out, verify_hashes=True)
            except CvzooError:
                pass
        return export(card, weights=weights, out=out, size=size, opset=opset, force=True)
