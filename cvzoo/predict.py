"""`cvzoo predict` and `cvzoo.Predictor`: artifact (or model name) + images -> top-k with class names."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from .artifact import Artifact, is_artifact
from .engines import Engine, accepts_uint8, check_engine_options, load_engine
from .errors import CvzooError
from .postprocess import Prediction, predictions_from_logits
from .preprocess import batches, decode, decode_stream


def artifact_for(model: Union[str, Path], weights: Union[None, str, Path] = None, size: Optional[int] = None,
                 random_init: bool = False) -> Path:
    """An artifact directory as given, or a model name exported once into the cache (exporting needs torch; finding
    the export in the cache does not). A name without weights takes the card's own; a card without any is refused
    unless `random_init` (speed needs no weights)."""
    if is_artifact(Path(model)):
        if weights is not None or size is not None:  # silently running the artifact's own would mislead
            raise CvzooError(f"{model}: an artifact has its weights and input size built in; --weights and --size "
                             "apply to a model name")
        return Path(model)
    if Path(model).exists():
        raise CvzooError(f"{model}: not a cvzoo artifact (no manifest.json) and not a model name")
    if os.sep in str(model) or str(model).startswith("."):  # meant as a path: model names have no slash
        raise CvzooError(f"{model}: no such artifact directory")
    from .card import get_card
    card = get_card(str(model))
    if weights is None and not random_init:
        if card.weights is None:
            raise CvzooError(f"{card.name}: no weights given and the card has none; pass --weights PATH, or "
                             "--random-init to run untrained weights anyway")
        weights = "default"
    from .checkpoint import resolve_default_weights
    from .export import cached_export
    wpath = resolve_default_weights(card) if str(weights) == "default" else weights
    return cached_export(card, Path(wpath) if wpath else None, card.size_or_default(size)).folder


def require_weights(art: Artifact, random_init: bool = False) -> Artifact:
    """The artifact, unless it was exported without weights and `random_init` does not allow it: its answers would
    look like predictions and mean nothing."""
    if art.random_init and not random_init:
        raise CvzooError(f"{art.folder}: exported without weights (random init); rebuild it with --weights PATH, or "
                         "pass --random-init to run untrained weights anyway")
    return art


class Predictor:
    """Runs an artifact on images. `model` is an artifact directory or a zoo model name."""

    def __init__(self, model: Union[str, Path], engine: Optional[str] = None, threads: Optional[int] = None,
                 weights: Union[None, str, Path] = None, size: Optional[int] = None, verify_hashes: bool = True,
                 random_init: bool = False, **engine_options):
        check_engine_options(engine, threads)  # before a zoo name is exported: a bad flag should not cost an export
        self.artifact = require_weights(Artifact.load(artifact_for(model, weights, size, random_init),
                                                      verify_hashes=verify_hashes), random_init)
        self.engine: Engine = load_engine(self.artifact, engine, threads=threads, **engine_options)
        self.preprocessing = self.artifact.preprocessing
        self.class_names = self.artifact.class_names
        self.pixels = accepts_uint8(self.engine)  # hand the engine uint8 crops, not normalized floats

    def logits(self, arrays: np.ndarray) -> np.ndarray:
        return self.engine.run(arrays)

    def predict(self, image: Union[str, Path], topk: int = 5) -> Prediction:
        """One image; raises CvzooError if it cannot be decoded."""
        d = decode(Path(image), self.preprocessing, self.pixels)
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
