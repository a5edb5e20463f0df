"""A built artifact is a directory: model file(s) + manifest.json. Written atomically; read without torch."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional

from .card import Preprocessing
from .errors import CvzooError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def default_cache() -> Path:
    """Where exports made on the way (a model name given to predict, a build's fp32) are kept for reuse."""
    return Path(os.environ.get("CVZOO_CACHE", Path.home() / ".cache" / "cvzoo"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions(*packages: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


@contextmanager
def atomic_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `out` in one rename, on failure it
    is removed. A crash never leaves a half artifact under the final name."""
    out = Path(out)
    if out.exists() and not force:
        raise CvzooError(f"{out}: already exists (use --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Add file hashes and write manifest.json (the last file written: its presence means complete)."""
    manifest = dict(manifest)
    manifest["format_version"] = FORMAT_VERSION
    manifest["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest["files"] = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
                         for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())
    return manifest


class Artifact:
    """A loaded artifact directory: everything needed to run it, from manifest.json alone."""

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest

    @classmethod
    def load(cls, folder: Path, verify_hashes: bool = False) -> "Artifact":
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise CvzooError(f"{folder}: not a cvzoo artifact (no {MANIFEST})")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CvzooError(f"{path}: unreadable manifest ({e})") from None
        art = cls(folder, manifest)
        if verify_hashes:
            art.verify()
        if art.degraded:
            logging.getLogger("cvzoo").warning(f"{folder}: built below its accuracy target and kept as asked "
                                               f"(--accept-degraded): {art.degraded}")
        return art

    def verify(self) -> None:
        for name, info in self.manifest.get("files", {}).items():
            p = self.folder / name
            if not p.is_file():
                raise CvzooError(f"{p}: listed in the manifest but missing")
            if sha256(p) != info["sha256"]:
                raise CvzooError(f"{p}: sha256 differs from the manifest (modified or corrupt)")

    @property
    def degraded(self) -> Optional[str]:
        """Why the build missed its accuracy target, for an artifact written anyway (--accept-degraded)."""
        return self.manifest.get("degraded")

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest["model_file"]

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(**self.manifest["preprocessing"])

    @property
    def class_names(self) -> list[str]:
        return [name for _, name in self.manifest["classes"]]

    @property
    def synsets(self) -> list[str]:
        return [syn for syn, _ in self.manifest["classes"]]

    @property
    def precision(self) -> str:
        return self.manifest.get("precision", "fp32")

    @property
    def inference_precision(self) -> Optional[str]:
        """f16 / bf16 when the build chose a compute precision for the engine to apply to an fp32 graph
        (OpenVINO's inference precision); None when the model file's own types are what runs."""
        return (self.manifest.get("runtime") or {}).get("inference_precision")

    @property
    def input_name(self) -> str:
        return self.manifest["inputs"][0]["name"]

    def get(self, key: str, default: Optional[object] = None):
        return self.manifest.get(key, default)


def is_artifact(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()
