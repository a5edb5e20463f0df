"""`cvzoo predict` and `cvzoo.Predictor`: artifact (or model name) + images -> top-k with class names."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from .artifact import Artifact, default_cache, is_artifact
from .card import Preprocessing
from .engines import Engine, accepts_uint8, load_engine, physical_cores
from .errors import CvzooError
from .postprocess import Prediction, predictions_from_logits
from .preprocess import image_notes, load_image, normalize, resize_crop


@dataclass
class Decoded:
    path: Path
    array: Optional[np.ndarray]
    error: Optional[str]
    notes: list[str]


def _decode(path: Path, pre: Preprocessing, pixels: bool = False) -> Decoded:
    """One file -> the engine's input: float32 CHW normalized, or with `pixels` the uint8 HWC crop (for
    engines that normalize themselves)."""
    try:
        if path.suffix == ".npz":
            from .datasets import load_npz_image
            img = load_npz_image(path)
        else:
            img = load_image(path)
        crop = resize_crop(img, pre)
        return Decoded(path, crop if pixels else normalize(crop, pre), None, image_notes(img))
    except CvzooError as e:
        return Decoded(path, None, str(e), [])
    except Exception as e:  # an unforeseen decoder failure must not stop a 50,000-image run
        return Decoded(path, None, f"{path}: cannot decode ({type(e).__name__}: {e})", [])


def decode_stream(paths: Sequence[Path], pre: Preprocessing, workers: Optional[int] = None,
                  prefetch: int = 64, pixels: bool = False) -> Iterator[Decoded]:
    """Decode + preprocess in a thread pool (Pillow releases the GIL), yielding in input order."""
    workers = workers or physical_cores()
    if workers <= 1:
        for p in paths:
            yield _decode(p, pre, pixels)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cvzoo-decode") as pool:
        pending = []
        it = iter(paths)
        for p in it:
            pending.append(pool.submit(_decode, p, pre, pixels))
            if len(pending) >= prefetch:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def batches(stream: Iterable[Decoded], batch: int) -> Iterator[list[Decoded]]:
    """Group decoded images, in order, into chunks holding at most `batch` usable ones."""
    chunk, usable = [], 0
    for d in stream:
        chunk.append(d)
        usable += d.error is None
        if usable >= batch:
            yield chunk
            chunk, usable = [], 0
    if chunk:
        yield chunk


def artifact_for(model: Union[str, Path], weights: Union[None, str, Path] = None, size: Optional[int] = None) -> Path:
    """An artifact directory as given, or a model name exported once into the cache (needs torch)."""
    if is_artifact(Path(model)):
        return Path(model)
    if Path(model).exists():
        raise CvzooError(f"{model}: not a cvzoo artifact (no manifest.json) and not a model name")
    from .artifact import sha256
    from .card import get_card
    from .checkpoint import resolve_default_weights
    card = get_card(str(model))
    wpath = resolve_default_weights(card) if str(weights) == "default" else weights
    tag = sha256(Path(wpath))[:12] if wpath else "random"
    out = default_cache() / "artifacts" / f"{card.name}-{size or card.input_size}-fp32-{tag}"
    if not is_artifact(out):
        from .export import export
        export(card, weights=wpath, out=out, size=size, force=out.exists())
    return out


class Predictor:
    """Runs an artifact on images. `model` is an artifact directory or a zoo model name."""

    def __init__(self, model: Union[str, Path], engine: Optional[str] = None, threads: Optional[int] = None,
                 weights: Union[None, str, Path] = None, size: Optional[int] = None, **engine_options):
        self.artifact = Artifact.load(artifact_for(model, weights, size))
        self.engine: Engine = load_engine(self.artifact, engine, threads=threads, **engine_options)
        self.preprocessing = self.artifact.preprocessing
        self.class_names = self.artifact.class_names
        self.pixels = accepts_uint8(self.engine)  # hand the engine uint8 crops, not normalized floats

    def logits(self, arrays: np.ndarray) -> np.ndarray:
        return self.engine.run(arrays)

    def predict(self, image: Union[str, Path], topk: int = 5) -> Prediction:
        """One image; raises CvzooError if it cannot be decoded."""
        d = _decode(Path(image), self.preprocessing, self.pixels)
        if d.error:
            raise CvzooError(d.error)
        pred = predictions_from_logits([str(image)], self.logits(d.array[None]), self.class_names, topk)[0]
        pred.warnings = d.notes
        return pred

    def predict_paths(self, paths: Sequence[Union[str, Path]], topk: int = 5, batch: int = 8,
                      workers: Optional[int] = None) -> Iterator[Prediction]:
        """Many images, in order; a bad image yields a Prediction with `error` set and the run goes on."""
        if batch < 1:
            raise CvzooError(f"--batch must be >= 1, got {batch}")
        stream = decode_stream([Path(p) for p in paths], self.preprocessing, workers, pixels=self.pixels)
        for chunk in batches(stream, batch):
            good = [d for d in chunk if d.error is None]
            preds = iter(predictions_from_logits([str(d.path) for d in good],
                                                 self.logits(np.stack([d.array for d in good])),
                                                 self.class_names, topk) if good else [])
            for d in chunk:
                if d.error:
                    yield Prediction(path=str(d.path), ids=[], probs=[], names=[], error=d.error)
                else:
                    pred = next(preds)
                    pred.warnings = d.notes
                    yield pred

    def close(self) -> None:
        self.engine.close()
