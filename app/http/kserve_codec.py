"""Open Inference Protocol (KServe v2) infer requests and responses, as bytes and arrays.

JSON tensors (`data`, flat or nested, row-major) and the binary tensor data extension:
the JSON header comes first, its length in the `Inference-Header-Content-Length` header,
then each binary tensor's raw little-endian bytes in the order the header lists them, each
sized by its `binary_data_size` parameter (what Triton's HTTP clients send and read). Only
FP32 is accepted: the model contract's datatype. Pure functions; no HTTP framework here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from model import contract

HEADER_LENGTH = "Inference-Header-Content-Length"
FP32 = np.dtype("<f4")  # the protocol's binary tensors are little-endian


class ProtocolError(ValueError):
    """The request does not follow the protocol or the model's signature (400)."""


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: dict[str, bool]  # requested output -> in binary; empty: every output
    binary_output: bool  # the default for outputs not listed (binary_data_output)


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return value


def _shape(item: dict, name: str) -> tuple[int, ...]:
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: shape must be a list of non-negative integers")
    return tuple(shape)


def _tensor(item: dict, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    """One input tensor; returns its name, its array and the next binary offset."""
    name = item.get("name")
    if not isinstance(name, str):
        raise ProtocolError("every input needs a name")
    shape = _shape(item, name)
    if item.get("datatype") != contract.DATATYPE:
        raise ProtocolError(f"input {name!r}: datatype must be {contract.DATATYPE}, "
                            f"got {item.get('datatype')!r}")
    count = math.prod(shape)
    size = _object(item.get("parameters") or {}, "parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * FP32.itemsize:
            raise ProtocolError(f"input {name!r}: binary_data_size {size!r} is not "
                                f"{count * FP32.itemsize} bytes for shape {list(shape)}")
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: the binary data ends before its "
                                f"{size} bytes")
        array = np.frombuffer(binary[offset : offset + size], FP32).reshape(shape)
        return name, array.astype(np.float32), offset + size
    if "data" not in item:
        raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
    try:
        array = np.asarray(item["data"], dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ProtocolError(f"input {name!r}: data is not a list of numbers") from err
    if array.size != count:
        raise ProtocolError(f"input {name!r}: {array.size} values for shape {list(shape)}")
    return name, array.reshape(shape), offset


def parse_request(body: bytes, header_length: int | None) -> InferRequest:
    """An infer request body; ProtocolError says what is wrong with it."""
    if header_length is None:
        header_length = len(body)
    if not 0 < header_length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {header_length} does not fit a body of "
                            f"{len(body)} bytes")
    try:
        doc = _object(json.loads(body[:header_length]), "the request")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"the request header is not JSON: {err}") from None
    items = doc.get("inputs")
    if not isinstance(items, list) or not items:
        raise ProtocolError("the request needs a list of inputs")
    binary, offset, inputs = memoryview(body)[header_length:], 0, {}
    for item in items:
        name, array, offset = _tensor(_object(item, "an input"), binary, offset)
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        inputs[name] = array
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data that no input "
                            "declares")
    outputs = {}
    for item in doc.get("outputs") or []:
        item = _object(item, "an output")
        params = _object(item.get("parameters") or {}, "parameters")
        outputs[str(item.get("name"))] = bool(params.get("binary_data", False))
    params = _object(doc.get("parameters") or {}, "parameters")
    request_id = doc.get("id")
    return InferRequest(None if request_id is None else str(request_id), inputs, outputs,
                        bool(params.get("binary_data_output", False)))


def encode_response(model: str, version: str, request: InferRequest,
                    outputs: dict[str, np.ndarray]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        doc["id"] = request.id
    blobs = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": contract.DATATYPE,
                                 "shape": list(array.shape)}
        if request.outputs.get(name, request.binary_output):
            raw = np.ascontiguousarray(array, FP32).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        doc["outputs"].append(entry)
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
