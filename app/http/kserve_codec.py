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
# JSON tensors cost about ten times their values' bytes to parse and to write: they are for
# small tensors (a 512x512 image), and a JSON header is refused by its size before it is
# parsed. Bigger tensors use the binary extension.
MAX_JSON_VALUES = 1 << 18
MAX_JSON_BYTES = 4 << 20
MAX_DEPTH = 16  # of the JSON header's nesting: a tensor of rank 4 needs 7
FP32_MAX = float(np.finfo(np.float32).max)


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


def _finite(array: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ProtocolError(f"input {name!r}: values must be finite FP32 numbers (no NaN, "
                            "no infinity, nothing beyond 3.4e38)")
    return array


def _numbers(data: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """JSON `data`, flat or nested as the shape: numbers only (no strings, no booleans)."""
    flat = data
    for _ in range(len(shape) - 1):  # nested row-major lists: flatten level by level
        if not (isinstance(flat, list) and flat and all(isinstance(v, list) for v in flat)):
            break
        flat = [v for row in flat for v in row]
    if not isinstance(flat, list) or not all(
            type(v) is float or type(v) is int for v in flat):
        raise ProtocolError(f"input {name!r}: data must be a list of numbers (JSON numbers, "
                            "not strings or booleans)")
    if any(type(v) is int and abs(v) > FP32_MAX for v in flat):
        raise ProtocolError(f"input {name!r}: a value is beyond the FP32 range")
    with np.errstate(over="ignore"):
        return np.asarray(flat, dtype=np.float32)


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
        return name, _finite(array.astype(np.float32), name), offset + size
    if "data" not in item:
        raise ProtocolError(f"input {name!r} has neither data nor binary_data_size")
    if count > MAX_JSON_VALUES:
        raise ProtocolError(f"input {name!r}: {count} values are too many for JSON (at most "
                            f"{MAX_JSON_VALUES}); send it with the binary tensor extension")
    array = _numbers(item["data"], shape, name)
    if array.size != count:
        raise ProtocolError(f"input {name!r}: {array.size} values for shape {list(shape)}")
    return name, _finite(array, name).reshape(shape), offset


def parse_request(body: bytes, header_length: int | None) -> InferRequest:
    """An infer request body; ProtocolError says what is wrong with it."""
    if header_length is None:
        header_length = len(body)
    if not 0 < header_length <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {header_length} does not fit a body of "
                            f"{len(body)} bytes")
    header = body[:header_length]
    if len(header) > MAX_JSON_BYTES:
        raise ProtocolError(f"the JSON part of the request is {len(header)} bytes, over "
                            f"{MAX_JSON_BYTES}: send big tensors with the binary tensor "
                            "extension")
    if _depth(header) > MAX_DEPTH:
        raise ProtocolError(f"the request header nests deeper than {MAX_DEPTH} levels")
    try:
        doc = _object(json.loads(header, parse_constant=_no_constant), "the request")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
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
    listed = doc.get("outputs", [])
    if not isinstance(listed, list):
        raise ProtocolError("outputs must be a list")
    outputs = {}
    for item in listed:
        item = _object(item, "an output")
        if not isinstance(item.get("name"), str):
            raise ProtocolError("every output needs a name")
        params = _object(item.get("parameters") or {}, "parameters")
        outputs[item["name"]] = _flag(params.get("binary_data", False), "binary_data")
    params = _object(doc.get("parameters") or {}, "parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError("id must be a string")
    return InferRequest(request_id, inputs, outputs,
                        _flag(params.get("binary_data_output", False), "binary_data_output"))


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ProtocolError(f"{name} must be true or false")
    return value


def _no_constant(token: str) -> Any:
    raise ProtocolError(f"{token} is not a number the protocol takes: values must be finite")


def _depth(raw: bytes) -> int:
    """Deepest nesting of [ and { in a JSON text (brackets inside strings counted too, which
    only errs towards refusing a header no tensor request would send)."""
    brackets = np.frombuffer(raw.translate(None, _NOT_BRACKETS), np.uint8)
    if not len(brackets):
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(np.cumsum(steps).max())


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def encode_response(model: str, version: str, request: InferRequest,
                    outputs: dict[str, np.ndarray]) -> tuple[list[bytes | memoryview],
                                                             int | None]:
    """The response body in parts (binary tensors as views of the arrays, never copied),
    and the JSON header's length when binary tensors follow it."""
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request.id is not None:
        doc["id"] = request.id
    blobs = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": contract.DATATYPE,
                                 "shape": list(array.shape)}
        if request.outputs.get(name, request.binary_output):
            raw = memoryview(np.ascontiguousarray(array, FP32)).cast("B")
            entry["parameters"] = {"binary_data_size": raw.nbytes}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        doc["outputs"].append(entry)
    header = json.dumps(doc, separators=(",", ":")).encode()
    return [header, *blobs], (len(header) if blobs else None)
