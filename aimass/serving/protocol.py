"""The Open Inference Protocol (KServe V2) over REST: messages, datatypes, and request validation.

Pure pydantic + numpy (no Ray), so the wire format and every validation rule are unit-tested without
a cluster, and the SDK client shares them.

Wire format (``POST /v2/models/{name}[/versions/{v}]/infer``)::

    {"id": "42", "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.0, ...]}]}
    -> {"model_name": "digits", "model_version": "3", "id": "42",
        "outputs": [{"name": "probabilities", "shape": [2, 10], "datatype": "FP32", "data": [...]}]}

``data`` is row-major, flat or nested (at most one list level per dimension). ``BYTES`` tensors carry
strings in JSON (UTF-8) and are decoded to numpy object arrays of ``bytes``.

The binary tensor data extension is supported both ways: a request with the
``Inference-Header-Content-Length: N`` header holds N bytes of JSON, then the raw bytes of every input
whose ``parameters.binary_data_size`` is set, in order (little-endian, row-major; ``BYTES`` elements
as a 4-byte little-endian length then the bytes). Outputs asked for with ``parameters.binary_data``
(or all, with the request parameter ``binary_data_output``) come back the same way.

Errors are ``{"error": "<message>"}`` (what standard V2 clients read) plus ``code``, ``fix``,
``location`` and ``request_id``. An unexpected error answers a generic message and the request id;
its detail goes to the server log only.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aimass.exceptions import InvalidRequestError

__all__ = [
    "BINARY_HEADER",
    "DATATYPES",
    "MAX_JSON_DEPTH",
    "DecodedRequest",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "ModelMetadataResponse",
    "PayloadTooLargeError",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadataResponse",
    "Signature",
    "TensorSpec",
    "datatype_of",
    "decode_request",
    "dtype_of",
    "encode_bytes_elements",
    "encode_outputs",
    "error_body",
    "parse_request",
    "signature_from_mlflow",
    "validate_inputs",
]

#: V2 datatype name -> numpy dtype.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # each element a bytes object (JSON: a UTF-8 string)
}
#: The header of the binary tensor data extension: the length of the JSON part of the body.
BINARY_HEADER = "Inference-Header-Content-Length"
#: Deepest nesting of lists/objects a request body may have. A body is an object > inputs list >
#: input object > data, so 40 leaves data room for 36 dimensions (the shape allows 32).
MAX_JSON_DEPTH = 40
_BY_DTYPE = {v: k for k, v in DATATYPES.items()}
_MLFLOW_DTYPES = {"bool": "BOOL", "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
                  "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64", "float16": "FP16",
                  "float32": "FP32", "float64": "FP64"}


class PayloadTooLargeError(InvalidRequestError):
    """A request body or tensor over the configured limits (HTTP 413)."""

    code = "payload_too_large"
    http_status = 413


def datatype_of(dtype: Any) -> str:
    """numpy dtype -> V2 datatype name (``float32`` -> ``FP32``)."""
    dt = np.dtype(dtype)
    if dt not in _BY_DTYPE:
        raise InvalidRequestError(f"dtype {dt} has no Open Inference Protocol datatype",
                                  fix=f"Use one of: {', '.join(str(d) for d in _BY_DTYPE)}.")
    return _BY_DTYPE[dt]


def dtype_of(datatype: str) -> np.dtype:
    """V2 datatype name -> numpy dtype."""
    if datatype not in DATATYPES:
        raise InvalidRequestError(f"unknown datatype {datatype!r}", fix=f"Use one of: {', '.join(DATATYPES)}.")
    return DATATYPES[datatype]


# -- messages ---------------------------------------------------------------------------------------
class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RequestInput(_Msg):
    name: str = Field(min_length=1, max_length=256, description="Input tensor name (from the model metadata).")
    shape: list[int] = Field(max_length=32, description="Tensor shape; the first dimension is the batch.")
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES (strings in JSON).")
    parameters: dict[str, Any] | None = Field(None, description="Per-input parameters; binary_data_size: the tensor's bytes "
                                              "follow the JSON (binary tensor data extension) instead of 'data'.")
    data: list[Any] | None = Field(None, description="Tensor contents, row-major, flat or nested once per dimension "
                                   "(omitted when the tensor is sent as binary data).")


class RequestOutput(_Msg):
    name: str = Field(min_length=1, max_length=256, description="Output tensor wanted.")
    parameters: dict[str, Any] | None = Field(None, description="Per-output parameters; binary_data: true returns the tensor as "
                                              "binary data after the JSON (binary tensor data extension).")


class InferenceRequest(_Msg):
    id: str | None = Field(None, max_length=256, description="Request id, echoed in the response.")
    model_name: str | None = Field(None, max_length=256, description="The model (as some clients send it): must be the "
                                   "model named in the path.")
    model_version: str | None = Field(None, max_length=256, description="The version (as some clients send it): must match "
                                      "the path's version, or pins one when the path names none.")
    parameters: dict[str, Any] | None = Field(None, description="Request parameters; binary_data_output: true returns every "
                                              "output as binary data.")
    inputs: list[RequestInput] = Field(min_length=1, max_length=64, description="Named input tensors.")
    outputs: list[RequestOutput] | None = Field(None, max_length=64, description="Outputs wanted (all when omitted).")


class ResponseOutput(_Msg):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferenceResponse(_Msg):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


class MetadataTensor(_Msg):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadataResponse(_Msg):
    name: str
    versions: list[str] = Field(default_factory=list)
    platform: str
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: dict[str, Any] | None = None


class ServerMetadataResponse(_Msg):
    name: str
    version: str
    extensions: list[str] = Field(default_factory=list)
    endpoints: list[str] = Field(default_factory=list, description="AI Mass extension: the direct URLs of this application's "
                                 "ingress replicas, which clients fall back on when the stable URL does not answer.")


class ErrorResponse(_Msg):
    error: str = Field(description="What was wrong (the field V2 clients read).")
    code: str | None = None
    fix: str | None = None
    location: str | None = None
    request_id: str | None = Field(None, description="The request's id (also the X-Request-Id header): quote it when "
                                   "reporting a problem; the server log has the detail.")


def error_body(exc: Exception, request_id: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response: V2's ``error`` plus our ``code``/``fix``/``location``/``request_id``.

    Only :class:`~aimass.exceptions.AimassError` messages are shown; any other exception gets a generic
    message (its text may hold internals), and the caller logs the detail under the request id."""
    from aimass.exceptions import AimassError

    if isinstance(exc, AimassError):
        msg = exc.message if exc.got is None else f"{exc.message} (got {exc.got!r})" if not isinstance(exc.got, str) or len(exc.got) < 200 else exc.message
        return {"error": msg, "code": exc.code, "fix": exc.fix, "location": exc.location, "request_id": request_id}
    return {"error": "internal error while serving the request", "code": "internal_error",
            "fix": "Retry; if it persists, report the request_id to the operator (the server log has the detail).",
            "location": None, "request_id": request_id}


# -- signatures -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (the batch dimension)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """What a model takes and returns (from its MLflow signature)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    class_names: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs],
                "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Signature":
        def specs(xs):
            return tuple(TensorSpec(x["name"], x["datatype"], tuple(int(s) for s in x["shape"])) for x in xs)

        return cls(specs(d["inputs"]), specs(d["outputs"]), tuple(d.get("class_names") or ()))

    @classmethod
    def from_card(cls, card: Any) -> "Signature":
        """The signature implied by an aimass ModelCard (used when a model has no MLflow signature)."""
        return cls(
            (TensorSpec(card.input_name, "FP32", (-1, *card.input_shape)),),
            (TensorSpec(card.output_name, "FP32", (-1, card.num_classes)),),
            tuple(card.class_names or ()),
        )


def signature_from_mlflow(mlmodel: dict[str, Any], class_names: list[str] | None = None) -> Signature | None:
    """Read the tensor signature from a parsed ``MLmodel`` document (None when it has none)."""
    import json

    sig = (mlmodel or {}).get("signature") or {}
    if not sig.get("inputs") or not sig.get("outputs"):
        return None

    def specs(raw: Any) -> tuple[TensorSpec, ...]:
        out = []
        items = json.loads(raw) if isinstance(raw, str) else raw
        for i, t in enumerate(items):
            if t.get("type") != "tensor":
                raise InvalidRequestError("only tensor signatures can be served", got=t.get("type"),
                                          fix="Log the model with a TensorSpec signature (aimass register does).")
            ts = t["tensor-spec"]
            dt = _MLFLOW_DTYPES.get(str(ts["dtype"]).replace("numpy.", ""))
            if dt is None:
                raise InvalidRequestError("unsupported tensor dtype in the model signature", got=ts["dtype"])
            out.append(TensorSpec(t.get("name") or f"input_{i}", dt, tuple(int(s) for s in ts["shape"])))
        return tuple(out)

    return Signature(specs(sig["inputs"]), specs(sig["outputs"]), tuple(class_names or ()))


# -- request parsing and validation -----------------------------------------------------------------
def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of lists/dicts (a scalar is 0, ``[]`` is 1), counted level by level without
    recursion; stops at ``limit + 1``. Lists of scalars are skipped at C speed (``set(map(type, ...))``)."""
    if type(obj) is not list and type(obj) is not dict:
        return 0
    level, d = [obj], 1
    while d <= limit:
        nxt = []
        for x in level:
            items = x.values() if type(x) is dict else x
            kinds = set(map(type, items))
            if list in kinds or dict in kinds:
                nxt.extend(e for e in items if type(e) is list or type(e) is dict)
        if not nxt:
            return d
        level, d = nxt, d + 1
    return d


def _depth_outside_data(obj: Any) -> int:
    """Nesting depth of a request body, not counting inside ``inputs[].data`` (checked per input
    against its shape, more cheaply: see :func:`_decode`)."""
    if type(obj) is not dict or type(obj.get("inputs")) is not list:
        return _depth(obj, MAX_JSON_DEPTH)
    rest = {k: v for k, v in obj.items() if k != "inputs"}
    worst = _depth(rest, MAX_JSON_DEPTH)
    for inp in obj["inputs"]:
        if type(inp) is dict:
            worst = max(worst, 2 + _depth({k: v for k, v in inp.items() if k != "data"}, MAX_JSON_DEPTH))
        else:
            worst = max(worst, 1 + _depth(inp, MAX_JSON_DEPTH))
    return worst


@dataclass
class DecodedRequest:
    """A parsed request and the binary tensors that followed its JSON (input index -> bytes)."""

    request: InferenceRequest
    binary: dict[int, bytes] = field(default_factory=dict)


def decode_request(body: bytes, header_length: str | int | None = None) -> DecodedRequest:
    """Raw body (+ the ``Inference-Header-Content-Length`` value, if any) -> :class:`DecodedRequest`.

    Every malformed body is an :class:`InvalidRequestError` (400): not JSON, nested deeper than
    :data:`MAX_JSON_DEPTH`, not the request schema, a binary part that does not add up."""
    json_part, rest = body, b""
    if header_length is not None:
        try:
            n = int(header_length)
        except (TypeError, ValueError):
            n = -1
        if n < 0 or n > len(body):
            raise InvalidRequestError(f"{BINARY_HEADER} must be the length of the JSON part of the body (0..{len(body)})",
                                      got=str(header_length)[:40], fix="Send the byte length of the JSON header.")
        json_part, rest = body[:n], body[n:]
    try:
        obj = json.loads(json_part)
    except RecursionError:
        raise InvalidRequestError(f"the request body is nested too deeply (the limit is {MAX_JSON_DEPTH} levels)",
                                  fix="Send tensor data flat in row-major order.") from None
    except (ValueError, UnicodeDecodeError) as e:
        hint = (f" (a binary request needs the {BINARY_HEADER} header)" if header_length is None and b"binary_data_size" in body[:65536]
                else "")
        raise InvalidRequestError(f"the request body is not valid JSON{hint}: {str(e)[:200]}",
                                  fix="Send Content-Type: application/json.") from None
    depth = _depth_outside_data(obj)
    if depth > MAX_JSON_DEPTH:
        raise InvalidRequestError(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep",
                                  fix="Send tensor data flat in row-major order, or nested once per dimension.")
    req = parse_request(obj)
    binary: dict[int, bytes] = {}
    pos = 0
    for i, inp in enumerate(req.inputs):
        size = (inp.parameters or {}).get("binary_data_size")
        if size is None:
            if inp.data is None:
                raise InvalidRequestError(f"input {inp.name!r} has no data", location=f"inputs[{i}].data",
                                          fix="Send 'data', or parameters.binary_data_size with the bytes after the JSON.")
            continue
        if inp.data is not None:
            raise InvalidRequestError(f"input {inp.name!r} has both 'data' and parameters.binary_data_size",
                                      location=f"inputs[{i}]", fix="Send the tensor one way only.")
        if header_length is None:
            raise InvalidRequestError(f"input {inp.name!r} is binary (binary_data_size) but the request has no {BINARY_HEADER} header",
                                      location=f"inputs[{i}].parameters", fix=f"Send {BINARY_HEADER}: <length of the JSON part>.")
        if type(size) is not int or size < 0 or pos + size > len(rest):
            raise InvalidRequestError(f"input {inp.name!r}: binary_data_size {size!r} does not fit the {len(rest) - pos} bytes left "
                                      "after the JSON", location=f"inputs[{i}].parameters.binary_data_size")
        binary[i] = rest[pos:pos + size]
        pos += size
    if pos != len(rest):
        raise InvalidRequestError(f"{len(rest) - pos} byte(s) after the JSON belong to no input",
                                  fix="binary_data_size of the inputs must add up to the bytes after the JSON.")
    return DecodedRequest(req, binary)


def parse_request(obj: Any) -> InferenceRequest:
    """A decoded JSON body -> :class:`InferenceRequest`, or :class:`InvalidRequestError` naming the field."""
    if not isinstance(obj, dict):
        raise InvalidRequestError("the request body must be a JSON object with an 'inputs' list", got=type(obj).__name__,
                                  fix='Send {"inputs": [{"name": ..., "shape": [...], "datatype": "FP32", "data": [...]}]}.')
    try:
        return InferenceRequest.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise InvalidRequestError(f"invalid inference request: {loc}: {err['msg']}", location=loc,
                                  fix="See the Open Inference Protocol request format in GET /openapi.json.") from None


def _max_elements(limit_rows: int, spec: TensorSpec) -> int:
    per_row = math.prod(d for d in spec.shape[1:] if d > 0) if len(spec.shape) > 1 else 1
    return max(1, limit_rows * max(1, per_row))


def validate_inputs(req: InferenceRequest, sig: Signature, *, max_rows: int, allow_non_finite: bool = False,
                    binary: dict[int, bytes] | None = None) -> dict[str, np.ndarray]:
    """Check every input against the signature and decode it to numpy.

    Checks, in order, each with a 4xx naming the input: unknown / missing / duplicate names, datatype
    (must cast safely to the signature's), shape rank and fixed dimensions, empty batch, too many rows,
    element count vs shape, non-numeric or ragged data, NaN/Inf (unless allowed), and outputs requested.

    ``binary`` holds the tensors sent with the binary extension (input index -> bytes, from
    :func:`decode_request`).

    Returns:
        input name -> array of the signature's dtype and the request's shape (``BYTES``: an object
        array of ``bytes``).
    """
    binary = binary or {}
    wanted = {t.name: t for t in sig.inputs}
    seen: dict[str, np.ndarray] = {}
    for i, inp in enumerate(req.inputs):
        loc = f"inputs[{i}]"
        spec = wanted.get(inp.name)
        if spec is None:
            raise InvalidRequestError(f"unknown input {inp.name!r}", location=f"{loc}.name",
                                      fix=f"The model takes: {', '.join(wanted)}.")
        if inp.name in seen:
            raise InvalidRequestError(f"input {inp.name!r} is given twice", location=f"{loc}.name")
        if inp.datatype not in DATATYPES:
            raise InvalidRequestError(f"input {inp.name!r}: unknown datatype {inp.datatype!r}", location=f"{loc}.datatype",
                                      fix=f"The model expects {spec.datatype}.")
        src, dst = DATATYPES[inp.datatype], DATATYPES[spec.datatype]
        if src != dst and (src.kind == "O" or dst.kind == "O" or not np.can_cast(src, dst, casting="safe")):
            raise InvalidRequestError(f"input {inp.name!r}: datatype {inp.datatype} does not match the model's {spec.datatype}",
                                      location=f"{loc}.datatype", fix=f"Send {spec.datatype} (see GET /v2/models/<name>).")
        shape = inp.shape
        if len(shape) != len(spec.shape):
            raise InvalidRequestError(f"input {inp.name!r}: shape {shape} has {len(shape)} dimension(s), the model expects "
                                      f"{len(spec.shape)} {list(spec.shape)}", location=f"{loc}.shape",
                                      fix="The first dimension is the batch; -1 means any size.")
        if any(d < 0 for d in shape):
            raise InvalidRequestError(f"input {inp.name!r}: shape {shape} has a negative dimension", location=f"{loc}.shape")
        for k, (got, exp) in enumerate(zip(shape, spec.shape, strict=True)):
            if exp >= 0 and got != exp:
                raise InvalidRequestError(f"input {inp.name!r}: dimension {k} is {got}, the model expects {exp} "
                                          f"(shape {list(spec.shape)})", location=f"{loc}.shape")
        if shape and shape[0] == 0:
            raise InvalidRequestError(f"input {inp.name!r}: empty batch (shape {shape})", location=f"{loc}.shape",
                                      fix="Send at least one row.")
        if shape and shape[0] > max_rows:
            raise PayloadTooLargeError(f"input {inp.name!r}: {shape[0]} rows is over the limit of {max_rows} per request",
                                       location=f"{loc}.shape", fix="Split the request into smaller batches.")
        n = math.prod(shape)
        if n > _max_elements(max_rows, spec):
            raise PayloadTooLargeError(f"input {inp.name!r}: {n} elements is over the limit", location=f"{loc}.shape")
        if i not in binary and inp.data is None:
            raise InvalidRequestError(f"input {inp.name!r} has no data", location=f"{loc}.data",
                                      fix="Send 'data', or parameters.binary_data_size with the bytes after the JSON.")
        arr = _decode_binary(inp, src, n, loc, binary[i]) if i in binary else _decode(inp, src, n, loc)
        if arr.dtype.kind == "f" and not allow_non_finite:
            ok = np.isfinite(arr)
            if not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                raise InvalidRequestError(f"input {inp.name!r} contains NaN or Inf (first at flat index {bad})",
                                          location=f"{loc}.data", fix="Send finite numbers only (this model sets allowNonFinite: false).")
        seen[inp.name] = arr.reshape(shape).astype(dst, copy=False)
    missing = [n for n in wanted if n not in seen]
    if missing:
        raise InvalidRequestError(f"missing input(s): {', '.join(missing)}", location="inputs",
                                  fix=f"The model takes: {', '.join(wanted)}.")
    if req.outputs:
        known = {t.name for t in sig.outputs}
        for j, o in enumerate(req.outputs):
            if o.name not in known:
                raise InvalidRequestError(f"unknown output {o.name!r}", location=f"outputs[{j}].name",
                                          fix=f"The model returns: {', '.join(sorted(known))}.")
    return seen


def _decode(inp: RequestInput, src: np.dtype, n: int, loc: str) -> np.ndarray:
    data = inp.data
    rank = max(1, len(inp.shape))
    # the first element's chain gives the nesting depth of regular data in O(rank); irregular data
    # (deeper elsewhere, ragged, numbers mixed with lists) makes np.asarray raise, which is a 400 below
    depth, x = 0, data
    while type(x) is list and depth <= rank:
        depth += 1
        x = x[0] if x else None
    if depth > rank:
        raise InvalidRequestError(f"input {inp.name!r}: data is nested more deeply than its shape {inp.shape} has dimensions",
                                  location=f"{loc}.data", fix="Nest the data at most once per dimension, or send it flat in "
                                  "row-major order.")
    try:
        arr = np.asarray(data, dtype=object) if src.kind == "O" else np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidRequestError(f"input {inp.name!r}: data is ragged (rows differ in length) or mixes numbers and lists",
                                  location=f"{loc}.data",
                                  fix="Send data flat in row-major order, or nested with every row the same length.") from None
    if arr.ndim > 1:
        arr = arr.reshape(-1)
    if arr.size != n:
        raise InvalidRequestError(f"input {inp.name!r}: {arr.size} value(s) given, shape {inp.shape} needs {n}",
                                  location=f"{loc}.data", fix="data must hold prod(shape) values in row-major order.")
    if src.kind == "O":
        return _bytes_elements(arr, inp, loc)
    kind = arr.dtype.kind
    if src.kind == "b":
        ok = kind == "b"
    elif src.kind in "iu":
        ok = kind in "iub" and kind != "b"
    else:  # float
        ok = kind in "iuf"
    if not ok:
        what = "non-numeric" if kind in "USO" else f"{arr.dtype} "
        raise InvalidRequestError(f"input {inp.name!r}: data holds {what} values, datatype {inp.datatype} needs "
                                  f"{'booleans' if src.kind == 'b' else 'integers' if src.kind in 'iu' else 'numbers'}",
                                  location=f"{loc}.data")
    if src.kind in "iu" and arr.size:
        info = np.iinfo(src)
        if arr.min() < info.min or arr.max() > info.max:
            raise InvalidRequestError(f"input {inp.name!r}: values out of range for {inp.datatype}", location=f"{loc}.data")
    try:
        return arr.astype(src, copy=False)
    except (ValueError, OverflowError, TypeError):
        raise InvalidRequestError(f"input {inp.name!r}: data does not fit {inp.datatype}", location=f"{loc}.data") from None


def _bytes_elements(arr: np.ndarray, inp: RequestInput, loc: str) -> np.ndarray:
    """JSON BYTES data: every element a string, kept as its UTF-8 bytes."""
    out = np.empty(arr.size, dtype=object)
    for k, v in enumerate(arr):
        if not isinstance(v, str):
            raise InvalidRequestError(f"input {inp.name!r}: BYTES data must be strings, element {k} is {type(v).__name__}",
                                      location=f"{loc}.data", fix="Send text as JSON strings, or raw bytes with the binary extension.")
        out[k] = v.encode("utf-8", "surrogatepass")
    return out


def _decode_binary(inp: RequestInput, src: np.dtype, n: int, loc: str, raw: bytes) -> np.ndarray:
    """A tensor sent with the binary extension: little-endian row-major values, or length-prefixed BYTES."""
    if src.kind == "O":
        out, pos = np.empty(n, dtype=object), 0
        for k in range(n):
            if pos + 4 > len(raw):
                raise InvalidRequestError(f"input {inp.name!r}: binary BYTES data ends after {k} of {n} element(s)",
                                          location=f"{loc}.parameters.binary_data_size",
                                          fix="Each element is a 4-byte little-endian length followed by that many bytes.")
            (m,) = struct.unpack_from("<I", raw, pos)
            pos += 4
            if pos + m > len(raw):
                raise InvalidRequestError(f"input {inp.name!r}: binary BYTES element {k} claims {m} bytes, {len(raw) - pos} are left",
                                          location=f"{loc}.parameters.binary_data_size")
            out[k] = raw[pos:pos + m]
            pos += m
        if pos != len(raw):
            raise InvalidRequestError(f"input {inp.name!r}: {len(raw) - pos} byte(s) left after {n} BYTES element(s)",
                                      location=f"{loc}.parameters.binary_data_size")
        return out
    need = n * src.itemsize
    if len(raw) != need:
        raise InvalidRequestError(f"input {inp.name!r}: {len(raw)} binary bytes given, shape {inp.shape} of {inp.datatype} needs {need}",
                                  location=f"{loc}.parameters.binary_data_size")
    arr = np.frombuffer(raw, dtype=src.newbyteorder("<"))
    if src.kind == "b" and arr.size and arr.view(np.uint8).max() > 1:
        raise InvalidRequestError(f"input {inp.name!r}: BOOL bytes must be 0 or 1", location=f"{loc}.data")
    return arr.astype(src, copy=False)


def encode_bytes_elements(a: np.ndarray) -> bytes:
    """BYTES elements in the binary extension's layout: each a 4-byte little-endian length, then its bytes."""
    parts = []
    for v in a.ravel():
        b = v if isinstance(v, bytes) else str(v).encode()
        parts.append(struct.pack("<I", len(b)))
        parts.append(b)
    return b"".join(parts)


def encode_outputs(arrays: dict[str, np.ndarray], wanted: list[RequestOutput] | None = None,
                   binary_default: bool = False) -> tuple[list[dict[str, Any]], list[bytes]]:
    """name -> array  ->  (V2 output tensors, binary parts in order).

    An output goes as binary data when its request entry says ``binary_data: true`` (or, with no
    entry or no such parameter, when ``binary_default``); otherwise as flat row-major JSON ``data``
    (``BYTES`` as UTF-8 strings, invalid sequences replaced)."""
    entries = {o.name: o for o in wanted} if wanted else {}
    names = list(entries) if wanted else list(arrays)
    out, blobs = [], []
    for name in names:
        a = np.ascontiguousarray(arrays[name])
        o = entries.get(name)
        flag = (o.parameters or {}).get("binary_data") if o is not None else None
        binary = binary_default if flag is None else bool(flag)
        dt = datatype_of(a.dtype)
        t: dict[str, Any] = {"name": name, "datatype": dt, "shape": list(a.shape)}
        if binary:
            blob = encode_bytes_elements(a) if dt == "BYTES" else a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif dt == "BYTES":
            t["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in a.ravel()]
        else:
            t["data"] = a.ravel().tolist()
        out.append(t)
    return out, blobs
