"""KServe v2 request bodies in Triton's binary format, shared by the load generators of serve_throughput.py."""
from __future__ import annotations

import json

import numpy as np

from cvzoo.serve.protocol import encode_bytes


def v2_binary(header: dict, blob: bytes) -> tuple[bytes, dict]:
    js = json.dumps(header).encode()
    return js + blob, {"Inference-Header-Content-Length": str(len(js)), "Content-Type": "application/octet-stream"}


def seeded_image(size: int) -> np.ndarray:
    """The one preprocessed FP32 image (1, 3, size, size) every tensor load sends."""
    return np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)


def tensor_body(size: int) -> tuple[bytes, dict]:
    """seeded_image in Triton's binary format, asking for the top-1."""
    x = seeded_image(size).tobytes()
    return v2_binary({"inputs": [{"name": "input", "shape": [1, 3, size, size], "datatype": "FP32",
                                  "parameters": {"binary_data_size": len(x)}}],
                      "outputs": [{"name": "topk_indices"}], "parameters": {"topk": 1}}, x)


def tensor_json_body(size: int) -> tuple[bytes, dict]:
    """tensor_body's request with the image as JSON numbers instead of binary data."""
    return v2_binary({"inputs": [{"name": "input", "shape": [1, 3, size, size], "datatype": "FP32",
                                  "data": seeded_image(size).reshape(-1).tolist()}],
                      "outputs": [{"name": "topk_indices"}], "parameters": {"topk": 1}}, b"")


def jpeg_body(data: bytes) -> tuple[bytes, dict]:
    """One encoded image as the `image` BYTES input (4-byte length prefix) asking for the top-1."""
    blob = encode_bytes([data])
    return v2_binary({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                  "parameters": {"binary_data_size": len(blob)}}],
                      "outputs": [{"name": "topk_indices"}], "parameters": {"topk": 1}}, blob)


TENSOR_BODIES = {"binary": tensor_body, "json": tensor_json_body}  # one FP32 image per request, either way
