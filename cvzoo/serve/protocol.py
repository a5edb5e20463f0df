"""The Open Inference Protocol (KServe v2) over HTTP, as tritonclient speaks it: a JSON request, optionally followed by
the binary tensor data (Triton's binary-data extension: `Inference-Header-Content-Length` says where the JSON ends,
each input's `parameters.binary_data_size` how many bytes it takes; BYTES elements are a 4-byte little-endian length
and the bytes). Pure functions: bytes in, arrays out, and back."""
from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import orjson

HEADER_LENGTH = "inference-header-content-length"
VERSION = "1"  # each served artifact is its model's one version
DTYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
          "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


class ProtocolError(ValueError):
    """A malformed request: answered 400 with this message."""


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    value: Any  # np.ndarray, or list[bytes] for BYTES


def parameters(obj: dict, where: str) -> dict:
    """`obj`'s "parameters" object ({} when absent)."""
    value = obj.get("parameters")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: 'parameters' must be a JSON object, got {type(value).__name__}")
    return value


def _bytes_elements(raw: bytes, name: str) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ProtocolError(f"input '{name}': BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, i)
        if i + 4 + n > len(raw):
            raise ProtocolError(f"input '{name}': BYTES element of {n} bytes runs past the data")
        out.append(raw[i + 4:i + 4 + n])
        i += 4 + n
    return out


def parse_request(body: bytes, header_length: Optional[str]) -> tuple[dict, list[Tensor]]:
    """The request's JSON header and its input tensors."""
    try:
        split = int(header_length) if header_length is not None else len(body)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} is not a number: '{header_length}'") from None
    if not 0 <= split <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {split} is outside the body ({len(body)} bytes)")
    view = memoryview(body)  # slices of a view, not copies of a tensor's bytes
    try:
        # orjson: a tensor as JSON numbers parses in an eighth of the json module's time (docs/serving.md)
        header = orjson.loads(view[:split])
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"malformed JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) or not header["inputs"]:
        raise ProtocolError("the request needs an 'inputs' list with at least one tensor")
    if not isinstance(header.get("id", ""), str):
        raise ProtocolError(f"'id' must be a string, got {type(header['id']).__name__}")
    offset, tensors = split, []
    for spec in header["inputs"]:
        if not isinstance(spec, dict):
            raise ProtocolError("each input must be an object with name, shape, datatype")
        name, dtype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or not isinstance(shape, list) or not all(is_count(d) for d in shape):
            raise ProtocolError(f"input {name!r}: needs a name and a shape of non-negative integers")
        if not isinstance(dtype, str) or (dtype != "BYTES" and dtype not in DTYPES):
            raise ProtocolError(f"input '{name}': unknown datatype {dtype!r}")
        count = math.prod(shape)
        size = parameters(spec, f"input '{name}'").get("binary_data_size")
        if size is not None:
            if not is_count(size):
                raise ProtocolError(f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}")
            raw = view[offset:offset + size]
            if len(raw) != size:
                raise ProtocolError(f"input '{name}': {size} bytes of binary data announced, {len(raw)} sent")
            offset += size
            if dtype == "BYTES":
                value = _bytes_elements(bytes(raw), name)
            else:
                if len(raw) != count * np.dtype(DTYPES[dtype]).itemsize:
                    raise ProtocolError(f"input '{name}': {len(raw)} bytes do not hold {dtype} {shape}")
                value = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)
        elif "data" in spec:
            value = _json_data(spec["data"], name, dtype, shape)
        else:
            raise ProtocolError(f"input '{name}': no data (neither 'data' nor binary_data_size)")
        if dtype == "BYTES" and len(value) != count:
            raise ProtocolError(f"input '{name}': {len(value)} elements for shape {shape}")
        tensors.append(Tensor(name, dtype, shape, value))
    return header, tensors


def is_count(v: Any) -> bool:
    """A JSON non-negative integer: JSON's true is no count, though Python's bool is an int."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _json_data(data: Any, name: str, dtype: str, shape: list[int]):
    if dtype == "BYTES":  # JSON cannot hold raw bytes: each element is base64 (an encoded image, say)
        flat = list(np.array(data, dtype=object).reshape(-1)) if isinstance(data, list) else [data]
        try:
            return [base64.b64decode(x, validate=True) for x in flat]
        except (TypeError, ValueError):
            raise ProtocolError(f"input '{name}': BYTES elements in JSON must be base64 strings") from None
    try:
        arr = np.asarray(data, dtype=DTYPES[dtype])
        return arr.reshape(shape)
    except (TypeError, ValueError):
        raise ProtocolError(f"input '{name}': data does not hold {dtype} {shape}") from None


def encode_bytes(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def encode_response(model: str, request_id: Optional[str], outputs: list[tuple[str, str, np.ndarray]],
                    binary: set[str]) -> tuple[bytes, dict[str, str]]:
    """(name, datatype, array) outputs -> body and headers; outputs named in `binary` go as binary data."""
    specs, blobs = [], []
    for name, dtype, arr in outputs:
        spec: dict = {"name": name, "datatype": dtype, "shape": list(arr.shape)}
        if name in binary:
            raw = encode_bytes([x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1)]) \
                if dtype == "BYTES" else np.ascontiguousarray(arr).tobytes()
            spec["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            spec["data"] = ([x.decode() if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
                            if dtype == "BYTES" else np.ascontiguousarray(arr.reshape(-1)))
        specs.append(spec)
    head = {"model_name": model, "model_version": VERSION, "outputs": specs}
    if request_id:
        head["id"] = request_id
    # orjson writes numpy arrays itself, with no list of Python floats between; a NaN or an infinity becomes null,
    # since JSON has neither (binary data keeps them)
    js = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {HEADER_LENGTH: str(len(js))} if blobs else {}
    return js + b"".join(blobs), headers
