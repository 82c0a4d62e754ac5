"""Model replicas: one registered model version per deployment, or several behind a multiplexed LRU.

A replica loads its model from the MLflow registry as data only (``card.json`` + safetensors or a
``weights_only`` state dict, see :mod:`aimass.models.io`): nothing is unpickled. Its constructor is
the readiness check: download, rebuild, load weights strictly, then a warm-up inference on zeros whose
output must have the signature's shape and be a probability distribution. A version that fails any of
these never receives traffic.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from aimass.exceptions import InvalidRequestError, NotFoundError, ServingError
from aimass.serving.batching import RowBatcher
from aimass.serving.protocol import Signature, signature_from_mlflow

__all__ = ["LoadedModel", "ModelServer", "MultiModelServer", "load_registered", "raw_signature"]

log = logging.getLogger("aimass.serving")


def raw_signature(card: Any) -> Signature:
    """The signature of a model that takes raw input, from its card.

    text: one ``BYTES`` tensor ``[-1]`` (UTF-8 strings); image: ``UINT8`` ``[-1, C, H, W]`` (encoded PNG/JPEG
    bytes are accepted as ``BYTES`` ``[-1]`` too); tensor/table: ``FP32`` as before. Outputs: one per head,
    named after the head (the primary head keeps the card's output name when there is only one).
    """
    from aimass.serving.protocol import TensorSpec

    kind = getattr(card, "input_kind", "tensor")
    if kind == "text":
        inp = TensorSpec(card.input_name, "BYTES", (-1,))
    elif kind == "image":
        inp = TensorSpec(card.input_name, "UINT8", (-1, *card.input_shape))
    else:
        inp = TensorSpec(card.input_name, "FP32", (-1, *card.input_shape))
    heads = card.head_specs
    if len(heads) == 1:
        outs = (TensorSpec(card.output_name, "FP32", (-1, heads[0]["num_outputs"])),)
    else:
        outs = tuple(TensorSpec(h["name"], "FP32", (-1, h["num_outputs"])) for h in heads)
    return Signature((inp,), outs, tuple(card.class_names or ()))


class LoadedModel:
    """A zoo model ready to serve, with its signature.

    Models that take raw input run their own preprocessing here, in the replica: text rows (str or
    UTF-8 bytes) go through the model's tokenizer; images arrive as uint8 ``[N, C, H, W]`` or as
    encoded PNG/JPEG bytes, decoded with the data step's ``decode_images`` and the card's preprocess.
    """

    def __init__(self, model: Any, signature: Signature, registered: str, version: str, device: str) -> None:
        import torch

        self.model = model
        self.signature = signature
        self.registered = registered
        self.version = version
        self.device = device
        self._torch = torch
        self.card = getattr(model, "card", None)
        self.input_kind = getattr(self.card, "input_kind", "tensor")
        if len(signature.inputs) != 1 or (len(signature.outputs) != 1 and self.input_kind == "tensor"):
            raise ServingError("aimass serves single-input models (several outputs for multi-head models)", got=signature.to_dict(),
                               fix="Register a zoo model (input tensor -> class probabilities).")
        self.input = signature.inputs[0]
        self.output = signature.outputs[0]
        self.input_shape = tuple(self.input.shape[1:])

    def _raw(self, x: np.ndarray):
        """Check and convert a raw batch for this model: returns what ``model.encode`` takes."""
        where = f"{self.registered} v{self.version}"
        if self.input_kind == "text":
            if x.dtype.kind not in ("U", "S", "O"):
                raise InvalidRequestError(f"input {self.input.name!r}: this model takes text (BYTES), got {x.dtype} numbers",
                                          location=where, fix="Send the texts as a BYTES tensor of UTF-8 strings.")
            return x.reshape(-1)
        if x.dtype.kind in ("U", "S", "O"):
            if self.input_kind != "image":
                raise InvalidRequestError(f"input {self.input.name!r}: this model takes numbers ({self.input.datatype}), got bytes/strings",
                                          location=where, fix=f"Send {self.input.datatype} data shaped {list(self.input.shape)}.")
            try:
                from aimass.data.preprocess import decode_images
            except ImportError:  # pragma: no cover - the data package provides it
                raise ServingError("this build cannot decode encoded images", fix="Send UINT8 [N, C, H, W] pixels.") from None
            blobs = [bytes(b) if not isinstance(b, str) else b.encode("latin-1") for b in x.reshape(-1).tolist()]
            return decode_images(self.card.preprocess, blobs)
        if tuple(x.shape[1:]) != self.input_shape:
            raise InvalidRequestError(f"input {self.input.name!r}: shape {list(x.shape)} does not fit this version's "
                                      f"{list(self.input.shape)}", location=where)
        if self.input_kind == "image":
            return np.ascontiguousarray(x, dtype=np.uint8) if x.dtype != np.uint8 else x
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Rows of raw input -> rows of the primary head's output (class probabilities), float32."""
        if self.input_kind == "tensor" and x.dtype.kind not in ("U", "S", "O"):
            if tuple(x.shape[1:]) != self.input_shape:
                raise InvalidRequestError(f"input {self.input.name!r}: shape {list(x.shape)} does not fit this version's "
                                          f"{list(self.input.shape)}", location=f"{self.registered} v{self.version}")
            t = self._torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            if self.device != "cpu":
                t = t.to(self.device, non_blocking=True)
            out = self.model.predict_proba(t)
        else:
            out = self.model.predict_proba(self._raw(x))
        return out.detach().to("cpu").numpy().astype(np.float32, copy=False)

    def predict_outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every head's output by the signature's output names (what a multi-head response carries)."""
        got = self.model.predict_heads(self._raw(x))
        heads = self.card.head_specs
        if len(heads) == 1:
            return {self.output.name: got[heads[0]["name"]].astype(np.float32, copy=False)}
        return {h["name"]: got[h["name"]].astype(np.float32, copy=False) for h in heads}

    def example(self) -> np.ndarray:
        """A one-row input of the right kind (the warm-up and readiness probes)."""
        if self.input_kind == "text":
            return np.array([b"warm up"], dtype=object)
        if self.input_kind == "image":
            return np.zeros((1, *self.input_shape), dtype=np.uint8)
        return np.zeros((1, *self.input_shape), dtype=np.float32)

    def warm_up(self) -> None:
        """The readiness check: an inference on a neutral input must give [1, classes] probabilities."""
        probs = self.predict(self.example())
        want = tuple(d for d in self.output.shape[1:])
        primary = self.card.head_specs[0]["kind"] if self.card is not None else "classification"
        dist_ok = primary != "classification" or abs(float(probs.sum()) - 1.0) <= 1e-3
        if probs.shape[1:] != want or not np.isfinite(probs).all() or not dist_ok:
            raise ServingError(f"{self.registered} v{self.version} failed its readiness check: warm-up output has shape "
                               f"{list(probs.shape)} (expected [1, {', '.join(map(str, want))}]) or is not a distribution")


def _mlmodel(root: Path, card_dir: Path) -> dict[str, Any]:
    import yaml

    d = card_dir
    while True:
        f = d / "MLmodel"
        if f.is_file():
            return yaml.safe_load(f.read_text()) or {}
        if d == root or root not in d.parents:
            return {}
        d = d.parent


def load_registered(registered: str, version: str, tracking_uri: str | None = None, registry_uri: str | None = None,
                    device: str = "cpu") -> LoadedModel:
    """Download ``models:/registered/version`` and rebuild it (no unpickling), then warm it up."""
    from aimass.models.io import load_card, load_model
    from aimass.tracking import Tracker

    if tracking_uri is None:
        from aimass.settings import Settings

        s = Settings.load()
        tracking_uri, registry_uri = s.tracking_uri, registry_uri or s.registry_uri
    tracker = Tracker(tracking_uri, registry_uri, retry_for_s=30.0)
    root = Path(tempfile.mkdtemp(prefix="aimass-serve-")).resolve()
    try:  # the weights are in memory once loaded: the download never outlives the load
        card_dir = tracker.download_model_dir(f"models:/{registered}/{version}", root).resolve()
        if root not in card_dir.parents and card_dir != root:
            raise ServingError("the model's files resolve outside their download directory", got=str(card_dir))
        for p in card_dir.iterdir():  # a symlink could point a loader at any file on the node
            if p.is_symlink():
                raise ServingError("model artifacts must not contain symbolic links", got=p.name)
        card = load_card(card_dir)
        model = load_model(card_dir, device=device)
        if card.input_kind in ("text", "image") or card.multi_head:
            sig = raw_signature(card)  # raw input (BYTES / UINT8) and one output per head, from the card
        else:
            sig = signature_from_mlflow(_mlmodel(root, card_dir), card.class_names) or Signature.from_card(card)
        if card.input_kind != "text" and tuple(sig.inputs[0].shape[1:]) != tuple(card.input_shape):
            raise ServingError("the MLflow signature does not match the model card", got={"signature": list(sig.inputs[0].shape),
                                                                                          "card": card.input_shape})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lm = LoadedModel(model, sig, registered, str(version), device)
    lm.warm_up()
    return lm


def model_thread(threads: int) -> ThreadPoolExecutor:
    """The one worker thread batched model calls run in (with torch's intra-op threads set there too)."""
    import torch

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="aimass-model", initializer=torch.set_num_threads,
                              initargs=(threads,))


def predict_batcher(lm: LoadedModel, pool: ThreadPoolExecutor, max_rows: int, *, wait_s: float = 0.0,
                    max_queued: int = 1 << 20) -> RowBatcher:
    """Continuous batches of ``lm.predict``, one at a time in ``pool``, while the event loop keeps taking requests."""

    async def send(x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(pool, lm.predict, x), {}

    return RowBatcher(send, max_rows, max_queued=max_queued, wait_s=wait_s, what=f"{lm.registered} v{lm.version}")


class _BatchingMixin:
    """Continuous row batching of the calls a replica receives (:class:`RowBatcher`, one batch at a
    time): an idle replica runs a call at once; while the model works, calls queue and run together
    as the next batch, up to ``maxBatchSize`` rows. Batched model calls run in one worker thread, so
    the event loop keeps taking requests meanwhile. Batches never mix models."""

    batching_enabled = True
    max_batch_size = 32
    batch_wait_s = 0.0

    def _init_batching(self, threads: int) -> None:
        self._row_batchers: dict[Any, tuple[LoadedModel, RowBatcher]] = {}
        self._pool = model_thread(threads)

    def _apply_batching(self, cfg: dict[str, Any] | None) -> None:
        cfg = cfg or {}
        self.batching_enabled = bool(cfg.get("enabled", True))
        self.max_batch_size = int(cfg.get("maxBatchSize", 32))
        self.batch_wait_s = float(cfg.get("batchWaitTimeoutS", 0.0))
        for _, b in self._row_batchers.values():
            b.configure(self.max_batch_size, self.batch_wait_s)

    def _batcher(self, key: Any, lm: LoadedModel) -> RowBatcher:
        entry = self._row_batchers.get(key)
        if entry is None or entry[0] is not lm:  # a reloaded model gets a fresh batcher
            entry = self._row_batchers[key] = (lm, predict_batcher(lm, self._pool, self.max_batch_size, wait_s=self.batch_wait_s))
        return entry[1]

    async def _run(self, lm: LoadedModel, x: np.ndarray, key: Any = None) -> tuple[np.ndarray, dict[str, Any]]:
        if self.batching_enabled and x.shape[0] <= self.max_batch_size:
            return await self._batcher(key, lm).submit(x)
        probs = lm.predict(x)
        return probs, {"batch_rows": int(x.shape[0]), "batch_requests": 1}


class ModelServer(_BatchingMixin):
    """One registered model version. Init args: {model, registered, version, trackingUri?, registryUri?, device}.

    ``user_config``: {"batching": {enabled, maxBatchSize, batchWaitTimeoutS}} (changed without a restart).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        threads = max(1, int(spec.get("numCpus") or 1))
        torch.set_num_threads(threads)
        self._init_batching(threads)
        self.spec = spec
        self.served = spec["model"]
        self.lm = load_registered(spec["registered"], str(spec["version"]), spec.get("trackingUri"), spec.get("registryUri"),
                                  spec.get("device", "cpu"))
        log.info("loaded %s v%s as %s", spec["registered"], spec["version"], self.served)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._apply_batching((user_config or {}).get("batching"))

    async def predict(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return await self._run(self.lm, x)

    async def metadata(self) -> dict[str, Any]:
        return {"model": self.served, "registered": self.lm.registered, "version": self.lm.version,
                "platform": "pytorch", "signature": self.lm.signature.to_dict()}

    async def ready(self) -> dict[str, Any]:
        """The readiness probe used before a version goes live: a real inference through the serving path."""
        probs, _ = await self.predict(self.lm.example())
        if not np.isfinite(probs).all():
            raise ServingError(f"{self.lm.registered} v{self.lm.version} returns non-finite probabilities")
        return await self.metadata()

    def check_health(self) -> None:
        if self.lm is None:
            raise ServingError("model not loaded")


class _Evictable:
    """Holds a multiplexed model; Serve's LRU calls ``__del__`` on eviction, which we count."""

    def __init__(self, lm: LoadedModel, model_id: str, on_evict) -> None:
        self.lm = lm
        self.model_id = model_id
        self._on_evict = on_evict
        self._gone = False

    def __del__(self) -> None:  # called by the LRU on eviction, and again by the GC: count once
        if not self._gone:
            self._gone = True
            try:
                self._on_evict(self.model_id)
            except Exception:  # noqa: BLE001 - never raise from a finalizer
                pass


class MultiModelServer(_BatchingMixin):
    """Several registered models on one deployment, loaded on demand into an LRU of ``cacheSize`` models.

    Init args: {models: {served name: {registered, version}}, cacheSize, trackingUri?, registryUri?, device}.
    The multiplexed model id is ``"<served name>:<version>"``; only ids of the configured models load.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        threads = max(1, int(spec.get("numCpus") or 1))
        torch.set_num_threads(threads)
        self._init_batching(threads)
        self.spec = spec
        self.allowed = {f"{name}:{m['version']}": (name, m) for name, m in spec["models"].items()}
        self._loaded: set[str] = set()
        self._events: deque[tuple[str, str]] = deque(maxlen=10_000)
        self._lock = threading.Lock()

        async def _load(model_id: str) -> _Evictable:
            if model_id not in self.allowed:
                raise NotFoundError(f"model {model_id!r} is not served by this deployment")
            _, m = self.allowed[model_id]
            lm = await asyncio.to_thread(load_registered, m["registered"], str(m["version"]), spec.get("trackingUri"),
                                         spec.get("registryUri"), spec.get("device", "cpu"))
            with self._lock:
                self._loaded.add(model_id)
                self._events.append(("load", model_id))
            return _Evictable(lm, model_id, self._evicted)

        self._get_model = serve.multiplexed(max_num_models_per_replica=int(spec.get("cacheSize", 4)))(_load)

    def _evicted(self, model_id: str) -> None:
        self._row_batchers.pop(model_id, None)  # its batcher holds the model: let it go with it
        with self._lock:
            self._loaded.discard(model_id)
            self._events.append(("evict", model_id))

    def _drain_events(self) -> list[tuple[str, str]]:
        with self._lock:
            ev = list(self._events)
            self._events.clear()
        return ev

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._apply_batching((user_config or {}).get("batching"))

    async def _get(self) -> LoadedModel:
        return (await self._get_model(serve.get_multiplexed_model_id())).lm

    async def predict(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        mid = serve.get_multiplexed_model_id()
        hit = mid in self._loaded
        probs, info = await self._run(await self._get(), x, mid)
        info = dict(info, cache="hit" if hit else "miss", cache_events=self._drain_events())
        return probs, info

    async def metadata(self) -> dict[str, Any]:
        mid = serve.get_multiplexed_model_id()
        lm = await self._get()
        name, _ = self.allowed[mid]
        return {"model": name, "registered": lm.registered, "version": lm.version, "platform": "pytorch",
                "signature": lm.signature.to_dict(), "cache_events": self._drain_events()}

    async def ready(self) -> dict[str, Any]:
        """The readiness probe of one multiplexed model (the request's model id): load it, infer once.

        Its cache events stay queued, so the ingress counts the probe's loads with its next answer."""
        lm = await self._get()
        probs, _ = await self._run(lm, lm.example(), serve.get_multiplexed_model_id())  # not predict: it drains the events
        if not np.isfinite(probs).all():
            raise ServingError(f"{lm.registered} v{lm.version} returns non-finite probabilities")
        return {"model": self.allowed[serve.get_multiplexed_model_id()][0], "registered": lm.registered, "version": lm.version}

    async def cache_state(self) -> dict[str, Any]:
        return {"loaded": sorted(self._loaded)}
