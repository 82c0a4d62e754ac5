"""The Open Inference Protocol (KServe V2) over REST: messages, datatypes, and request validation.

Pure pydantic + numpy (no Ray), so the wire format and every validation rule are unit-tested without
a cluster, and the SDK client shares them.

Wire format (``POST /v2/models/{name}[/versions/{v}]/infer``)::

    {"id": "42", "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [0.0, ...]}]}
    -> {"model_name": "digits", "model_version": "3", "id": "42",
        "outputs": [{"name": "probabilities", "shape": [2, 10], "datatype": "FP32", "data": [...]}]}

``data`` is row-major, flat or nested. Errors are ``{"error": "<message>"}`` (what standard V2 clients
read) plus ``code``, ``fix`` and ``location``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aimass.exceptions import InvalidRequestError

__all__ = [
    "DATATYPES",
    "InferenceRequest",
    "InferenceResponse",
    "MetadataTensor",
    "ModelMetadataResponse",
    "RequestInput",
    "RequestOutput",
    "ResponseOutput",
    "ServerMetadataResponse",
    "Signature",
    "TensorSpec",
    "PayloadTooLargeError",
    "datatype_of",
    "dtype_of",
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
}
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
        raise InvalidRequestError(f"unknown datatype {datatype!r}", fix=f"Use one of: {', '.join(DATATYPES)} (BYTES is not supported).")
    return DATATYPES[datatype]


# -- messages ---------------------------------------------------------------------------------------
class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RequestInput(_Msg):
    name: str = Field(min_length=1, max_length=256, description="Input tensor name (from the model metadata).")
    shape: list[int] = Field(max_length=32, description="Tensor shape; the first dimension is the batch.")
    datatype: str = Field(description="BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64.")
    parameters: dict[str, Any] | None = Field(None, description="Per-input parameters (binary_data_size is not supported).")
    data: list[Any] = Field(description="Tensor contents, row-major, flat or nested.")


class RequestOutput(_Msg):
    name: str = Field(min_length=1, max_length=256, description="Output tensor wanted.")
    parameters: dict[str, Any] | None = Field(None, description="Per-output parameters (binary_data must be false).")


class InferenceRequest(_Msg):
    id: str | None = Field(None, max_length=256, description="Request id, echoed in the response.")
    parameters: dict[str, Any] | None = Field(None, description="Request parameters (ignored).")
    inputs: list[RequestInput] = Field(min_length=1, max_length=64, description="Named input tensors.")
    outputs: list[RequestOutput] | None = Field(None, max_length=64, description="Outputs wanted (all when omitted).")


class ResponseOutput(_Msg):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


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


class ErrorResponse(_Msg):
    error: str = Field(description="What was wrong (the field V2 clients read).")
    code: str | None = None
    fix: str | None = None
    location: str | None = None


def error_body(exc: Exception) -> dict[str, Any]:
    """The JSON body of an error response: V2's ``error`` plus our ``code``/``fix``/``location``."""
    from aimass.exceptions import AimassError

    if isinstance(exc, AimassError):
        msg = exc.message if exc.got is None else f"{exc.message} (got {exc.got!r})" if not isinstance(exc.got, str) or len(exc.got) < 200 else exc.message
        return {"error": msg, "code": exc.code, "fix": exc.fix, "location": exc.location}
    return {"error": str(exc) or type(exc).__name__, "code": "internal_error", "fix": None, "location": None}


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


def validate_inputs(req: InferenceRequest, sig: Signature, *, max_rows: int, allow_non_finite: bool = False) -> dict[str, np.ndarray]:
    """Check every input against the signature and decode it to numpy.

    Checks, in order, each with a 4xx naming the input: unknown / missing / duplicate names, datatype
    (must cast safely to the signature's), shape rank and fixed dimensions, empty batch, too many rows,
    element count vs shape, non-numeric or ragged data, NaN/Inf (unless allowed), and outputs requested.

    Returns:
        input name -> array of the signature's dtype and the request's shape.
    """
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
        if inp.parameters and inp.parameters.get("binary_data_size") is not None:
            raise InvalidRequestError(f"input {inp.name!r}: the binary tensor extension is not supported", location=f"{loc}.parameters",
                                      fix="Send the tensor as JSON in 'data'.")
        if inp.datatype not in DATATYPES:
            raise InvalidRequestError(f"input {inp.name!r}: unknown datatype {inp.datatype!r}", location=f"{loc}.datatype",
                                      fix=f"The model expects {spec.datatype}.")
        src, dst = DATATYPES[inp.datatype], DATATYPES[spec.datatype]
        if src != dst and not np.can_cast(src, dst, casting="safe"):
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
        arr = _decode(inp, src, n, loc)
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
            if o.parameters and o.parameters.get("binary_data"):
                raise InvalidRequestError(f"output {o.name!r}: the binary tensor extension is not supported",
                                          location=f"outputs[{j}].parameters", fix="Set binary_data to false.")
    return seen


def _decode(inp: RequestInput, src: np.dtype, n: int, loc: str) -> np.ndarray:
    data = inp.data
    if data and isinstance(data[0], list):
        try:
            arr = np.asarray(data)
        except ValueError:
            raise InvalidRequestError(f"input {inp.name!r}: nested data is ragged", location=f"{loc}.data",
                                      fix="Every row must have the same length, or send the data flat in row-major order.") from None
        arr = arr.reshape(-1)
    else:
        arr = np.asarray(data)
    if arr.size != n:
        raise InvalidRequestError(f"input {inp.name!r}: {arr.size} value(s) given, shape {inp.shape} needs {n}",
                                  location=f"{loc}.data", fix="data must hold prod(shape) values in row-major order.")
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
    except (ValueError, OverflowError, TypeError) as e:
        raise InvalidRequestError(f"input {inp.name!r}: data does not fit {inp.datatype}: {e}", location=f"{loc}.data") from None


def encode_outputs(arrays: dict[str, np.ndarray], wanted: list[RequestOutput] | None = None) -> list[dict[str, Any]]:
    """name -> array  ->  V2 output tensors (flat row-major data)."""
    names = [o.name for o in wanted] if wanted else list(arrays)
    out = []
    for name in names:
        a = np.ascontiguousarray(arrays[name])
        out.append({"name": name, "datatype": datatype_of(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()})
    return out
