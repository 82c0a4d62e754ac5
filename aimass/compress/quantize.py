"""Post-training int8 quantization on x86 CPUs.

Which path, and why: torch 2.13 marks ``torch.ao.quantization`` as deprecated in favour of torchao's
``quantize_``. Measured side by side on this project's CPU machines (2 vCPU x86, batch 32, one thread,
see ``benchmarks/compress.py``), torchao 0.18's ``Int8DynamicActivationInt8WeightConfig`` runs eager
int8 tensor subclasses with no fused CPU kernel and is *slower* than fp32 (1.7x slower), while
``torch.ao.quantization.quantize_dynamic`` dispatches to the fbgemm/x86 ``quantized::linear_dynamic``
kernel and is several times faster. So CPU serving uses the torch.ao dynamic path (engine ``x86``),
and the kernel that runs is reported in the compression info. torchao's path is the one to use on GPUs.

A quantized model is stored as data only: its card says ``compression: {"quantize": "dynamic_int8"}``
and its weights are a ``weights_only`` state dict holding the int8 packed weights. Loading rebuilds the
fp32 architecture from the card, applies the same quantization, then loads the int8 state strictly.
"""

from __future__ import annotations

import warnings
from typing import Any

from aimass.exceptions import SpecError

__all__ = ["quantize_dynamic_int8", "quantized_modules", "apply_compression", "DYNAMIC_INT8"]

DYNAMIC_INT8 = "dynamic_int8"


def _engine() -> str:
    import torch

    engines = torch.backends.quantized.supported_engines
    for e in ("x86", "fbgemm", "onednn", "qnnpack"):
        if e in engines:
            return e
    raise SpecError("this torch build has no quantized CPU engine", got=engines,
                    fix="Use a torch build with fbgemm/x86 quantized kernels (the standard x86 CPU wheel has them).")


def _quantize(model):
    import torch
    from torch import nn

    torch.backends.quantized.engine = _engine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation banner: the choice is explained in the module doc
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=False)


def quantized_modules(model) -> list[str]:
    """Names of the modules that run int8 kernels."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return [name for name, m in model.named_modules() if isinstance(m, DynamicLinear)]


def quantize_dynamic_int8(model) -> tuple[Any, dict[str, Any]]:
    """Dynamic int8 quantization of every ``nn.Linear`` (weights int8, activations quantized per batch).

    Returns the quantized copy (the input model is left untouched) and an info dict: the quantized module
    names, the engine and the kernel that runs. Raises :class:`SpecError` when the model has no layer the
    method applies to (a convolutional model needs static quantization with calibration).
    """
    from torch import nn

    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise SpecError("dynamic int8 quantization does not apply: the model has no Linear layer",
                        got=type(getattr(model, "net", model)).__name__,
                        fix="Use method prune, or onnx export, for this model.")
    q = _quantize(model)
    q.eval()
    if hasattr(model, "card"):
        import copy

        card = copy.deepcopy(model.card)
        card.compression = {**(getattr(card, "compression", None) or {}), "quantize": DYNAMIC_INT8}
        q.card = card
    names = quantized_modules(q)
    import torch

    return q, {"method": "quantize", "mode": DYNAMIC_INT8, "engine": torch.backends.quantized.engine,
               "kernel": "quantized::linear_dynamic (fbgemm/x86)", "quantized_modules": names,
               "fp32_linear_modules": len(linear)}


def apply_compression(model, compression: dict[str, Any] | None):
    """Re-apply a card's structural compression to a freshly built fp32 model, before its weights load."""
    if not compression:
        return model
    kind = compression.get("quantize")
    if kind is None:
        return model
    if kind != DYNAMIC_INT8:
        raise SpecError(f"unknown quantization {kind!r} in the model card", got=compression,
                        fix=f"Supported: {DYNAMIC_INT8}. Re-run the compress step with this aimass version.")
    return _quantize(model)
