"""ONNX export with a parity check on held-out rows, and an ONNX Runtime model behind the zoo contract.

The exported graph takes the same raw features as the torch model (the normalisation buffers are part of
the graph) and outputs class probabilities, so serving and evaluation treat an exported model like any
other. The dynamo exporter (``torch.onnx.export(..., dynamo=True)``) is tried first; the TorchScript
exporter is the fallback for graphs dynamo cannot capture, and which one produced the file is recorded.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aimass.exceptions import SpecError, StepError

__all__ = ["ONNX_FILE", "export_onnx", "check_parity", "ParityReport", "OnnxModel"]

ONNX_FILE = "model.onnx"
log = logging.getLogger(__name__)


def _probs_module(model):
    import torch
    from torch import nn

    class Probabilities(nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.softmax(self.inner(x).float(), dim=-1)

    return Probabilities(model).eval()


def _unsupported_operator(exc: BaseException) -> str | None:
    text = f"{exc}\n{exc.__cause__ or ''}"
    for pat in (r"Unsupported ONNX opset version", r"(aten::[A-Za-z0-9_.]+)", r"(aten\.[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)",
                r"operator '?([A-Za-z0-9_:.]+)'? (?:is )?not supported"):
        m = re.search(pat, text)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return None


def export_onnx(model, directory: str | Path, input_shape: list[int], opset: int = 18) -> dict[str, Any]:
    """Write ``model.onnx`` (raw features in, probabilities out, dynamic batch) into ``directory``.

    Raises :class:`StepError` naming the unsupported operator when neither exporter can translate the graph.
    """
    import torch

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / ONNX_FILE
    wrapped = _probs_module(model)
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    errors: list[BaseException] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(wrapped, (example,), dynamo=True, opset_version=opset, input_names=["input"],
                                     output_names=["probabilities"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                     verbose=False)
            prog.save(str(path))
            return {"exporter": "dynamo", "opset": opset, "file": ONNX_FILE, "bytes": path.stat().st_size}
        except Exception as exc:  # noqa: BLE001 - fall back to the TorchScript exporter, then report both
            errors.append(exc)
            log.info("dynamo ONNX export failed (%s); trying the TorchScript exporter", str(exc).splitlines()[0][:200])
        try:
            torch.onnx.export(wrapped, (example,), str(path), dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["probabilities"], dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}})
            return {"exporter": "torchscript", "opset": opset, "file": ONNX_FILE, "bytes": path.stat().st_size}
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    path.unlink(missing_ok=True)
    op = next((o for o in map(_unsupported_operator, errors) if o), None)
    first = str(errors[-1]).splitlines()[0][:300] if str(errors[-1]) else type(errors[-1]).__name__
    raise StepError(f"ONNX export failed{f' on unsupported operator {op}' if op else ''}", got=first,
                    fix="Replace that operator in the model, raise `opset`, or leave onnx out of the compress methods.")


def _session(path: Path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


@dataclass
class ParityReport:
    """How closely the exported model follows the torch model on held-out rows."""

    rows: int
    max_abs_diff: float
    class_agreement: float
    max_abs_diff_limit: float
    min_agreement: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_parity(torch_model, onnx_path: str | Path, x: np.ndarray, max_abs_diff: float = 1e-4,
                 min_agreement: float = 0.999, batch_size: int = 256) -> ParityReport:
    """Run both models on ``x``; compare probabilities (max |diff|) and predicted classes (agreement)."""
    import torch

    if len(x) == 0:
        raise SpecError("the parity check needs held-out rows, got none", fix="Give the data step's test split a share.")
    sess = _session(Path(onnx_path))
    diffs, agree = [], 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = np.ascontiguousarray(x[i:i + batch_size], dtype=np.float32)
            ref = torch_model.predict_proba(torch.from_numpy(xb)).numpy()
            got = sess.run(None, {"input": xb})[0]
            diffs.append(float(np.abs(ref - got).max()))
            agree += int((ref.argmax(1) == got.argmax(1)).sum())
    mad, agreement = max(diffs), agree / len(x)
    return ParityReport(rows=len(x), max_abs_diff=mad, class_agreement=agreement, max_abs_diff_limit=max_abs_diff,
                        min_agreement=min_agreement, passed=bool(mad <= max_abs_diff and agreement >= min_agreement))


class OnnxModel:
    """An exported model on ONNX Runtime behind the zoo contract (``predict_proba`` on torch tensors).

    Serving, evaluation and the trade-off measurement call it exactly like a torch zoo model.
    """

    def __init__(self, directory: str | Path, card, threads: int = 1) -> None:
        self.directory = Path(directory)
        self.card = card
        path = self.directory / ONNX_FILE
        if not path.is_file():
            raise SpecError("ONNX model directory has no model.onnx", got=str(self.directory),
                            fix="Point at a directory written by the export step.")
        self._sess = _session(path, threads)
        self.training = False

    def predict_proba(self, x):
        import torch

        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        out = self._sess.run(None, {"input": np.ascontiguousarray(arr, dtype=np.float32)})[0]
        return torch.from_numpy(out)

    __call__ = predict_proba

    def eval(self) -> "OnnxModel":
        return self

    def to(self, device: str) -> "OnnxModel":
        if str(device) != "cpu":
            raise SpecError("this ONNX model runs on ONNX Runtime's CPU provider only", got=str(device),
                            fix="Serve it with useGpu: false, or serve the torch model on GPU.")
        return self
