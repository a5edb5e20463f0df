"""PaddlePaddle `.pdparams` files read as data: a pickle of {name: numpy array}, unpickled with an allow-list.

`paddle.save(layer.state_dict(), path)` writes a plain pickle whose only globals are numpy's array
reconstructors. A generic `pickle.load` would also run whatever else a file names, so the unpickler here
resolves only those few numpy names and refuses every other global before anything is called.
Needs no paddle (and no torch): numpy only.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from .errors import CvzooError

# paddle.save's own bookkeeping entry: {structured name: internal parameter name}, plain strings.
PADDLE_NAME_TABLE = "StructuredToParameterName@@"

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # this numpy's array reconstructor
_SCALAR = np.float32(0).__reduce__()[0]  # 0-d values some writers store
_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # numpy 1.x writes numpy.core.*, numpy 2.x numpy._core.*: the same two functions.
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
}


class _Refused(pickle.UnpicklingError):
    """The pickle names something outside the allow-list (raised before it is looked up or called)."""


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise _Refused(f"persistent id {pid!r}")


def read_pdparams(path: Path) -> dict[str, np.ndarray]:
    """{parameter name: array} from a .pdparams file, or CvzooError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CvzooError(f"{path}: checkpoint file not found")
    data = path.read_bytes()
    if not data:
        raise CvzooError(f"{path}: checkpoint file is empty")
    try:
        obj = _ArraysOnly(io.BytesIO(data)).load()
    except _Refused as e:
        raise CvzooError(f"{path}: refused: the .pdparams pickle asks for {e}, which is not a numpy array; "
                         f"cvzoo only reads arrays from .pdparams files and never runs code from them") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as e:
        raise CvzooError(f"{path}: not a readable .pdparams file (truncated or corrupt?): "
                         f"{type(e).__name__}: {e}") from None
    if not isinstance(obj, dict) or not obj:
        raise CvzooError(f"{path}: a .pdparams file must hold a dict of named arrays, got {type(obj).__name__}")
    arrays, bad = {}, []
    for key, value in obj.items():
        if key == PADDLE_NAME_TABLE:
            continue
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(key, str) or not isinstance(value, np.ndarray) or value.dtype == object:
            bad.append(f"{key!r} ({type(value).__name__})")
            continue
        arrays[key] = value
    if bad:
        raise CvzooError(f"{path}: refused: entries that are not numeric arrays: {', '.join(bad[:6])}"
                         + (f" (+{len(bad) - 6} more)" if len(bad) > 6 else ""))
    if not arrays:
        raise CvzooError(f"{path}: no parameters found")
    return arrays
