"""Compression and export speed, side by side in one run (ratios against fp32 torch eager, same process).

  * int8 (dynamic, x86 kernels) vs fp32 throughput at batch 32 for the serving benchmark's ``large`` zoo MLP
    (hidden 2048-2048-2048, trained briefly on digits so accuracy means something) and for a MiniLM-sized
    transformer encoder (6 layers, hidden 384, 12 heads, sequence 64; transformers' BertModel from a config,
    random weights: speed only). Goal >= 1.8x, accuracy loss <= 1 point (MLP).
  * ONNX Runtime vs torch eager: p50 at batch 1 and throughput at batch 32 (MLP). Goal >= 1.5x at batch 1.
  * 50 % unstructured pruning: accuracy drop and speed change (dense kernels: no speed-up expected).

Every figure uses one intra-op thread (what one serving replica gets by default) and the same inputs.

    python benchmarks/compress.py            # ~2 minutes on 2 CPU cores
    python benchmarks/compress.py --quick --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _p50_ms(fn, x, iters: int) -> float:
    for _ in range(10):
        fn(x)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn(x)
        ts.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(ts, 50))


def _rows_per_s(fn, x, iters: int) -> float:
    for _ in range(3):
        fn(x)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return len(x) * iters / (time.perf_counter() - t0)


def _interleaved(fns: dict, x, iters: int, rounds: int, how) -> dict[str, float]:
    """Median over ``rounds`` interleaved slices, so a noisy neighbour hits every variant alike."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            out[k].append(how(f, x, iters))
    return {k: float(np.median(v)) for k, v in out.items()}


def train_mlp(epochs: int):
    import torch
    from sklearn.datasets import load_digits

    from aimass.models import ModelCard, build_model

    d = load_digits()
    x, y = d.data.astype(np.float32), d.target.astype(np.int64)
    idx = np.random.default_rng(0).permutation(len(x))
    tr, te = idx[:1500], idx[1500:]
    card = ModelCard(name="mlp", input_shape=[64], num_classes=10, args={"hidden": [2048, 2048, 2048], "dropout": 0.0},
                     class_names=[str(i) for i in range(10)], feature_mean=x[tr].mean(0).tolist(),
                     feature_scale=np.where(x[tr].std(0) < 1e-8, 1, x[tr].std(0)).tolist())
    torch.manual_seed(0)
    m = build_model(card)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    for _ in range(epochs):
        for i in range(0, len(xt), 64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xt[i:i + 64]), yt[i:i + 64]).backward()
            opt.step()
    return m.eval(), x[te], y[te]


def acc(model, x, y) -> float:
    import torch

    with torch.inference_mode():
        return float((model.predict_proba(torch.from_numpy(x)).numpy().argmax(1) == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Fewer iterations (noisier).")
    ap.add_argument("--json", help="Write the results here too.")
    args = ap.parse_args()
    import torch

    from aimass.compress import check_parity, export_onnx, prune_magnitude, quantize_dynamic_int8
    from aimass.compress.onnx import OnnxModel

    torch.set_num_threads(1)
    iters, rounds = (20, 3) if args.quick else (60, 5)
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
                 "cpus": __import__("os").cpu_count(), "torch": torch.__version__, "threads": 1}

    mlp, xt, yt = train_mlp(2 if args.quick else 4)
    q, info = quantize_dynamic_int8(mlp)
    pruned, _ = prune_magnitude(mlp, 0.5)
    with tempfile.TemporaryDirectory() as d:
        export_onnx(mlp, d, [64])
        parity = check_parity(mlp, Path(d) / "model.onnx", xt)
        om = OnnxModel(d, mlp.card)
        b32, b1 = torch.from_numpy(np.resize(xt, (32, 64)).astype(np.float32)), torch.from_numpy(xt[:1])
        with torch.inference_mode():
            fns = {"fp32": mlp.predict_proba, "int8": q.predict_proba, "pruned": pruned.predict_proba, "onnx": om.predict_proba}
            thr = _interleaved(fns, b32, iters, rounds, _rows_per_s)
            p50 = _interleaved(fns, b1, iters * 5, rounds, _p50_ms)
    accs = {"fp32": acc(mlp, xt, yt), "int8": acc(q, xt, yt), "pruned": acc(pruned, xt, yt), "onnx": acc(om, xt, yt)}
    res["mlp_large"] = {"throughput_b32_rows_s": thr, "p50_b1_ms": p50, "accuracy": accs, "onnx_parity": parity.to_dict(),
                        "int8_kernel": info["kernel"]}
    res["ratios"] = {
        "int8_vs_fp32_throughput_b32_mlp": thr["int8"] / thr["fp32"],
        "int8_accuracy_drop_points_mlp": 100 * (accs["fp32"] - accs["int8"]),
        "onnx_vs_torch_p50_b1_speedup": p50["fp32"] / p50["onnx"],
        "onnx_vs_torch_throughput_b32": thr["onnx"] / thr["fp32"],
        "pruned50_vs_fp32_throughput_b32": thr["pruned"] / thr["fp32"],
        "pruned50_accuracy_drop_points": 100 * (accs["fp32"] - accs["pruned"]),
    }

    # ONNX Runtime vs torch eager on the serving benchmark's ``small`` MLP too (256-128): per-call overhead dominates
    from aimass.models import ModelCard, build_model

    small = build_model(ModelCard(name="mlp", input_shape=[64], num_classes=10, args={"hidden": [256, 128], "dropout": 0.0})).eval()
    with tempfile.TemporaryDirectory() as d:
        export_onnx(small, d, [64])
        som = OnnxModel(d, small.card)
        with torch.inference_mode():
            sfns = {"fp32": small.predict_proba, "onnx": som.predict_proba}
            s_thr = _interleaved(sfns, b32, iters * 5, rounds, _rows_per_s)
            s_p50 = _interleaved(sfns, b1, iters * 5, rounds, _p50_ms)
    res["mlp_small"] = {"throughput_b32_rows_s": s_thr, "p50_b1_ms": s_p50}
    res["ratios"]["onnx_vs_torch_p50_b1_speedup_small"] = s_p50["fp32"] / s_p50["onnx"]
    res["ratios"]["onnx_vs_torch_throughput_b32_small"] = s_thr["onnx"] / s_thr["fp32"]

    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    torch.manual_seed(0)
    enc = BertModel(cfg).eval()
    qenc, _ = quantize_dynamic_int8(enc)
    ids = torch.randint(0, cfg.vocab_size, (32, 64))
    with torch.inference_mode():
        out_fp, out_q = enc(input_ids=ids).last_hidden_state, qenc(input_ids=ids).last_hidden_state
        tthr = _interleaved({"fp32": lambda t: enc(input_ids=t), "int8": lambda t: qenc(input_ids=t)}, ids,
                            max(2, iters // 10), rounds, _rows_per_s)
    cos = torch.nn.functional.cosine_similarity(out_fp.flatten(1), out_q.flatten(1)).mean().item()
    res["minilm_sized_encoder"] = {"throughput_b32_seqs_s": tthr, "int8_vs_fp32_cosine": cos}
    res["ratios"]["int8_vs_fp32_throughput_b32_minilm_sized"] = tthr["int8"] / tthr["fp32"]

    r = res["ratios"]
    print(f"large MLP (2048x3), batch 32, 1 thread: fp32 {thr['fp32']:.0f} rows/s, int8 {thr['int8']:.0f} rows/s -> "
          f"{r['int8_vs_fp32_throughput_b32_mlp']:.2f}x (goal >= 1.8x); accuracy {accs['fp32']:.4f} -> {accs['int8']:.4f} "
          f"(drop {r['int8_accuracy_drop_points_mlp']:.2f} points, goal <= 1)")
    print(f"MiniLM-sized encoder, batch 32 x 64 tokens: fp32 {tthr['fp32']:.1f} seq/s, int8 {tthr['int8']:.1f} seq/s -> "
          f"{r['int8_vs_fp32_throughput_b32_minilm_sized']:.2f}x (goal >= 1.8x); output cosine {cos:.4f}")
    print(f"ONNX Runtime vs torch eager (large MLP): p50 at batch 1 {p50['fp32']:.3f} -> {p50['onnx']:.3f} ms = "
          f"{r['onnx_vs_torch_p50_b1_speedup']:.2f}x (goal >= 1.5x); throughput at batch 32 {r['onnx_vs_torch_throughput_b32']:.2f}x; "
          f"parity max |diff| {parity.max_abs_diff:.2g}")
    print(f"ONNX Runtime vs torch eager (small MLP 256-128): p50 at batch 1 {s_p50['fp32']:.3f} -> {s_p50['onnx']:.3f} ms = "
          f"{r['onnx_vs_torch_p50_b1_speedup_small']:.2f}x (goal >= 1.5x); throughput at batch 32 {r['onnx_vs_torch_throughput_b32_small']:.2f}x")
    print(f"pruning 50% (unstructured, no fine-tune): throughput {r['pruned50_vs_fp32_throughput_b32']:.2f}x (dense kernels: "
          f"no speed-up expected), accuracy drop {r['pruned50_accuracy_drop_points']:.2f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
