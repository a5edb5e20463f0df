"""Softmax, top-k and the output formats (rich table, JSON lines, the seeds' result.txt). Torch-free."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .errors import CvzooError


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the k largest per row, largest first (stable for ties: lower index first; NaN last)."""
    k = min(k, scores.shape[-1])
    if k == 1:  # the common top-1, a sort's work spared: argmax also takes the lowest index of a tie
        best = scores.max(axis=-1, keepdims=True)
        if not np.isnan(best.sum()):  # no NaN (argmax would rank one first)
            return scores.argmax(axis=-1)[..., None], best
    idx = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    return idx, np.take_along_axis(scores, idx, axis=-1)


@dataclass
class Prediction:
    path: str
    ids: list[int]
    probs: list[float]
    names: list[str]
    error: Optional[str] = None  # set instead of ids when the image could not be used
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict:
        """The fields of `predict --jsonl` (and of the server's /v1/predict)."""
        if not self.ok:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "topk": [{"id": i, "prob": round(p, 8), "name": n}
                                            for i, p, n in zip(self.ids, self.probs, self.names)]}

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False)


def predictions_from_logits(paths: Sequence[str], logits: np.ndarray, class_names: Sequence[str],
                            k: int = 5) -> list[Prediction]:
    idx, _ = topk(logits, k)  # ranked by logit, which softmax keeps, as the server does
    val = np.take_along_axis(softmax(logits), idx, axis=-1)
    return [Prediction(path=str(p), ids=[int(i) for i in ii], probs=[float(v) for v in vv],
                       names=[class_names[int(i)] for i in ii]) for p, ii, vv in zip(paths, idx, val)]


def result_txt_lines(pred: Prediction) -> list[str]:
    """The seeds' result.txt: one line per top-k entry, `top-0` first (vaststreamx sample_cls format)."""
    return [f"{pred.path}: Relay top-{r} id: {i}, prob: {p:.8f}, class name: {n}"
            for r, (i, p, n) in enumerate(zip(pred.ids, pred.probs, pred.names))]


_RESULT_LINE = re.compile(r"^(?P<path>.+): Relay top-(?P<rank>\d+) id: (?P<id>-?\d+), prob: (?P<prob>[-+0-9.eE]+|nan), "
                          r"class name: (?P<name>.*)$")


def parse_result_txt(lines: Iterable[str]) -> dict[str, list[tuple[int, int, float, str]]]:
    """result.txt -> {path: [(rank, id, prob, name), ...]} in file order; raises ValueError on a bad line."""
    out: dict[str, list[tuple[int, int, float, str]]] = {}
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        m = _RESULT_LINE.match(line)
        if not m:
            raise ValueError(f"line {n} is not in result.txt format: {line[:120]!r}")
        out.setdefault(m["path"], []).append((int(m["rank"]), int(m["id"]), float(m["prob"]), m["name"]))
    return out


def _read_umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: setting it to read it is not thread-safe


def created_mode(directory: bool = False) -> int:
    """The mode open() / mkdir() would give under this process's umask. tempfile's files (0600) and folders (0700)
    are private to their creator: renamed into place as a result or an artifact, nobody else could read them."""
    return (0o777 if directory else 0o666) & ~_UMASK


def _temp_file(folder: Path, prefix: str, what: Path) -> tuple[int, str]:
    """A new temporary file in `folder` (made if missing); where that cannot be, one line naming `what`."""
    import tempfile
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".tmp")
    except OSError as e:
        raise CvzooError(f"{what}: cannot write there ({e.strerror or e})") from None


def _refuse_folder(path: Path) -> None:
    if path.is_dir():
        raise CvzooError(f"{path}: is a folder, not a file to write")


def _temp_beside(path: Path) -> tuple[int, str]:
    _refuse_folder(path)
    return _temp_file(path.parent, f".{path.name}.", path)


def _remove_temp(fd_and_path: tuple[int, str]) -> None:
    import os
    os.close(fd_and_path[0])
    os.unlink(fd_and_path[1])


def writable_folder(folder: Union[str, Path], what: Optional[Path] = None) -> Path:
    """`folder`, checked before a run does its work: a folder this process can write in, or can make (nothing is
    made here). `what`: the path the error line names (the folder itself by default)."""
    folder = Path(folder)
    what = what or folder
    have = next(p for p in (folder, *folder.parents) if p.exists())
    if not have.is_dir():
        raise CvzooError(f"{what}: {'' if have == what else f'{have} '}is a file, not a folder to write in")
    _remove_temp(_temp_file(have, ".cvzoo-write-check.", what))
    return folder


def writable_file(path: Union[str, Path]) -> Path:
    """`path`, checked before a run does its work, so that the work is not lost at the end: a file this process can
    write there."""
    path = Path(path)
    _refuse_folder(path)
    writable_folder(path.parent, what=path)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new content, never half of it."""
    import os
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, created_mode())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, say
        Path(tmp).unlink(missing_ok=True)
        raise CvzooError(f"{path}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
