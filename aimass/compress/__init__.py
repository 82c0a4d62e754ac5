"""Compression and export of trained models: int8 quantization, magnitude pruning, ONNX export, and the
trade-off measurement that the register gate reads.

``aimass.steps`` only wires these; every function here works on a loaded zoo model (see
:mod:`aimass.models`) and plain numpy arrays, so it is testable without Ray or MLflow.

Example::

    from aimass.compress import quantize_dynamic_int8, measure_candidate
    q, info = quantize_dynamic_int8(model)
    row = measure_candidate("int8", q, model_dir, x_test, y_test)
"""

from aimass.compress.measure import Candidate, directory_size_mb, measure_candidate, select_candidate
from aimass.compress.onnx import OnnxModel, ParityReport, check_parity, export_onnx
from aimass.compress.prune import prune_magnitude, sparsity
from aimass.compress.quantize import apply_compression, quantize_dynamic_int8, quantized_modules

__all__ = [
    "Candidate",
    "OnnxModel",
    "ParityReport",
    "apply_compression",
    "check_parity",
    "directory_size_mb",
    "export_onnx",
    "measure_candidate",
    "prune_magnitude",
    "quantize_dynamic_int8",
    "quantized_modules",
    "select_candidate",
    "sparsity",
]
