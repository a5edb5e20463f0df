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

from pydantic import ValidationError

from .card import Preprocessing
from .errors import CvzooError
from .manifest import FORMAT_VERSION, Manifest, content_digest
from .postprocess import created_mode

MANIFEST = "manifest.json"


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
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    except OSError as e:
        raise CvzooError(f"{out}: cannot write there ({e.strerror or e})") from None
    try:
        yield tmp
        os.chmod(tmp, created_mode(directory=True))
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


def write_manifest(folder: Path, sections: dict) -> Manifest:
    """Validate `sections` as a Manifest, add the file hashes and write manifest.json (the last file written: its
    presence means complete)."""
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    manifest = Manifest.model_validate({**sections, "format_version": FORMAT_VERSION, "files": files,
                                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    manifest.digest = content_digest(json.loads(manifest.to_json()))
    with open(folder / MANIFEST, "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
        f.flush()
        os.fsync(f.fileno())
    return manifest


def _one_line(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "manifest"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


class Artifact:
    """A loaded artifact directory: everything needed to run it, from manifest.json alone."""

    def __init__(self, folder: Path, manifest: Manifest):
        self.folder = Path(folder)
        self.manifest = manifest

    @classmethod
    def load(cls, folder: Path, verify_hashes: bool = True) -> "Artifact":
        """Read manifest.json and check every file it lists against its sha256 (a copy gone wrong is refused, not
        run); verify_hashes=False is for who checked already (a bench worker whose parent did) or asked --no-verify."""
        folder = Path(folder)
        path = folder / MANIFEST
        if not path.is_file():
            raise CvzooError(f"{folder}: not a cvzoo artifact (no {MANIFEST})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            manifest = Manifest.model_validate(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CvzooError(f"{path}: unreadable manifest ({e})") from None
        except ValidationError as e:
            raise CvzooError(f"{path}: not a valid manifest: {_one_line(e)}") from None
        if verify_hashes and manifest.digest is not None and content_digest(data) != manifest.digest:
            raise CvzooError(f"{path}: modified since it was written (its content does not match its digest); "
                             "rebuild the artifact, or pass --no-verify to run it anyway")
        art = cls(folder, manifest)
        if verify_hashes:
            art.verify()
        if art.degraded:
            logging.getLogger("cvzoo").warning(f"{folder}: built below its accuracy target and kept as asked "
                                               f"(--accept-degraded): {art.degraded}")
        return art

    def verify(self) -> None:
        files = self.manifest.files
        model_file = self.manifest.model_file
        if model_file not in files:
            raise CvzooError(f"{self.folder / MANIFEST}: lists no sha256 for {model_file}; cannot verify the artifact "
                             "(rebuild it, or pass --no-verify)")
        for name, info in files.items():
            if name in ("", ".", "..") or Path(name).name != name:  # the artifact's own files, nothing beside it
                raise CvzooError(f"{self.folder / MANIFEST}: lists '{name}', which is not a file of this folder")
            p = self.folder / name
            if not p.is_file():
                raise CvzooError(f"{p}: listed in the manifest but missing (rebuild the artifact)")
            if sha256(p) != info.sha256:
                raise CvzooError(f"{p}: sha256 differs from the manifest (modified or corrupt; rebuild it, or pass "
                                 "--no-verify to run it anyway)")

    @property
    def degraded(self) -> Optional[str]:
        """Why the build missed its accuracy target, for an artifact written anyway (--accept-degraded)."""
        return self.manifest.degraded

    @property
    def random_init(self) -> bool:
        """Exported without a checkpoint: fine for timing, meaningless for predictions."""
        return self.manifest.weights.random_init is not None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest.model_file

    @property
    def preprocessing(self) -> Preprocessing:
        return self.manifest.preprocessing

    @property
    def class_names(self) -> list[str]:
        return [name for _, name in self.manifest.classes]

    @property
    def synsets(self) -> list[str]:
        return [syn for syn, _ in self.manifest.classes]

    @property
    def precision(self) -> str:
        return self.manifest.precision

    @property
    def inference_precision(self) -> Optional[str]:
        """f16 / bf16 when the build chose a compute precision for the engine to apply to an fp32 graph
        (OpenVINO's inference precision); None when the model file's own types are what runs."""
        return self.manifest.runtime.inference_precision

    @property
    def input_name(self) -> str:
        return self.manifest.io.inputs[0].name


def is_artifact(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()
