"""Label sets shipped with the package (torch-free). Index = line order = sorted synset order."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

from .errors import CvzooError


@lru_cache(maxsize=None)
def load_label_set(name: str) -> tuple[tuple[str, str], ...]:
    """Return ((synset, name), ...) for a shipped label set such as 'imagenet-1k'."""
    path = resources.files("cvzoo") / "labels" / f"{name}.tsv"
    if not path.is_file():
        raise CvzooError(f"unknown label set '{name}' (no cvzoo/labels/{name}.tsv)")
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            synset, label = line.split("\t", 1)
            rows.append((synset, label))
    return tuple(rows)
