"""Transfer learning: initialise a model from pretrained or registered weights, freeze, group, adapt.

``init.from`` may be a local directory (an aimass model directory with ``card.json``, or a
transformers directory with ``config.json``), ``s3://bucket/prefix``, an MLflow model
(``models:/name@alias``, ``models:/name/3``, ``runs:/<run>/model``) or a hub id (for users who reach
the hub). Weights are loaded as data only (safetensors / ``weights_only``), ``trust_remote_code`` is
never enabled. A tensor whose shape differs is an error naming both shapes, except the head when the
classes differ: then the head starts fresh ("a new head").
"""

from __future__ import annotations

import fnmatch
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aimass.exceptions import NotFoundError, SpecError

__all__ = [
    "Source",
    "add_lora",
    "apply_freeze",
    "head_keys",
    "init_model",
    "merge_lora",
    "param_groups",
    "resolve_source",
    "trainable_parameters",
]


class Source:
    """A resolved ``init.from``: ``kind`` is "aimass" (card.json) or "hf" (transformers config.json)."""

    def __init__(self, uri: str, kind: str, path: Path | None, lineage: dict[str, Any]) -> None:
        self.uri, self.kind, self.path, self.lineage = uri, kind, path, lineage


def _classify(uri: str, path: Path, lineage: dict[str, Any]) -> Source:
    if (path / "card.json").is_file():
        return Source(uri, "aimass", path, lineage)
    if (path / "config.json").is_file():
        return Source(uri, "hf", path, lineage)
    raise NotFoundError("init.from holds neither an aimass model (card.json) nor a transformers model (config.json)",
                        got=uri, fix="Point at a model directory: one written by aimass, or a transformers save_pretrained() directory.")


def resolve_source(uri: str, *, tracking_uri: str | None = None, registry_uri: str | None = None,
                   s3_endpoint_url: str | None = None, work_dir: str | Path | None = None) -> Source:
    """Fetch ``uri`` to a local directory (when remote) and say what it holds."""
    work = Path(work_dir or tempfile.mkdtemp(prefix="aimass-init-"))
    if uri.startswith(("models:/", "runs:/")):
        from aimass.tracking import Tracker

        if tracking_uri is None:
            from aimass.settings import Settings

            s = Settings.load()
            tracking_uri, registry_uri = s.tracking_uri, registry_uri or s.registry_uri
        tracker = Tracker(tracking_uri, registry_uri, retry_for_s=10.0)
        lineage: dict[str, Any] = {"source": uri}
        resolved_uri = uri
        if uri.startswith("models:/"):
            info = tracker.resolve_model_uri(uri)
            lineage.update({"model": info.get("name"), "version": info.get("version")})
            resolved_uri = info.get("uri") or uri
        try:
            path = tracker.download_model_dir(resolved_uri, work / "mlflow")
        except NotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds
            raise NotFoundError(f"could not fetch init.from {uri!r}: {str(exc).splitlines()[0][:300]}", got=uri,
                                fix="Check the name, version or alias (`aimass models versions NAME`) and the tracking URI.") from None
        return _classify(uri, path, lineage)
    if uri.startswith("s3://"):
        from aimass.storage import get_store

        store = get_store(uri, endpoint_url=s3_endpoint_url)
        keys = store.list("")
        if not keys:
            raise NotFoundError("init.from: no objects under this s3:// prefix", got=uri, fix="Upload the model directory there first.")
        out = work / "s3"
        for k in keys:
            store.get_file(k, out / k.lstrip("/"))
        return _classify(uri, out, {"source": uri})
    p = Path(uri).expanduser()
    if p.is_dir():
        return _classify(uri, p.resolve(), {"source": str(p.resolve())})
    if uri.startswith(("/", ".", "~")) or Path(uri).suffix or uri.count("/") > 1 or "://" in uri:
        raise NotFoundError("init.from does not exist", got=uri,
                            fix="Give an existing directory, s3://bucket/prefix, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN/model.")
    return _hub(uri, work)


def _hub(model_id: str, work: Path) -> Source:
    """A hub id: fetched into ``work`` with transformers (cache first). Offline, a clear error."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(model_id, allow_patterns=["*.json", "*.txt", "*.safetensors", "*.model"],
                                      local_dir=str(work / "hub")))
    except Exception as exc:  # noqa: BLE001 - network and hub errors of every kind
        raise NotFoundError(f"could not fetch {model_id!r} from the Hugging Face hub ({type(exc).__name__})", got=model_id,
                            fix="The hub is not reachable from here. Save the model with save_pretrained() to a directory "
                                "(or upload that directory to s3://bucket/prefix) and set init.from to that path.") from None
    return _classify(model_id, path, {"source": f"hf:{model_id}"})


# -- weights ---------------------------------------------------------------------------------------
def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's output layer (the part replaced when the classes differ)."""
    from aimass.models.text import TextModel

    keys = set(model.state_dict())
    if isinstance(model, TextModel):
        return {k for k in keys if re.search(r"(^|\.)(classifier|score)(\.|$)", k)}
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = name
    return {k for k in keys if last is not None and k.startswith(last + ".")}


def _load_from(model: nn.Module, state: dict[str, torch.Tensor], *, new_head: bool, what: str) -> dict[str, Any]:
    """Copy ``state`` into ``model``; mismatched shapes outside the head are an error naming both shapes."""
    target = model.state_dict()
    heads = head_keys(model)
    loaded, fresh = 0, []
    for k, v in target.items():
        if k in heads and new_head:
            fresh.append(k)
            continue
        if k not in state:
            if k.endswith(("position_ids", "feature_mean", "feature_scale")):
                continue
            raise SpecError(f"init.from {what} has no tensor {k!r} that the model needs", got=k,
                            fix="Initialise from a model of the same architecture (same model and modelArgs).")
        src = state[k]
        if tuple(src.shape) != tuple(v.shape):
            raise SpecError(f"init.from {what}: tensor {k!r} has shape {list(src.shape)} but the model needs {list(v.shape)}",
                            got={"from": list(src.shape), "model": list(v.shape)},
                            fix="Use the same architecture and modelArgs as the model you start from; only the head may differ "
                                "(it is replaced when the class names differ).")
        target[k] = src.to(v.dtype)
        loaded += 1
    model.load_state_dict(target, strict=True)
    return {"loaded_tensors": loaded, "new_head": bool(fresh)}


def init_model(card, init: dict[str, Any] | None, source: Source | None = None, tokenizer_dir: str | Path | None = None):
    """Build the model of ``card`` and initialise it from ``source`` (already resolved); returns (model, card, lineage).

    The card comes back completed: a text model's ``config`` from the source when not given, ``init_from``
    and ``lineage`` set, the LoRA settings recorded when an unmerged adapter is trained.
    """
    from aimass.models.registry import ModelCard, build_model

    init = dict(init or {})
    card = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))  # a private copy
    lora = init.get("lora")
    card.args.pop("lora", None)
    lineage: dict[str, Any] = {}
    tok = None
    state = None
    new_head = False
    if source is not None:
        lineage = dict(source.lineage)
        card.init_from = source.uri
        if source.kind == "aimass":
            from aimass.models.io import load_model

            src_model = load_model(source.path)
            if src_model.card.args.get("lora"):
                src_model = merge_lora(src_model)
            sc = src_model.card
            if sc.name != card.name:
                raise SpecError(f"init.from is a {sc.name!r} model but this step trains {card.name!r}", got=sc.name,
                                fix=f"Set model: {sc.name} (or initialise from a {card.name} model).")
            if card.name == "text-transformer" and "config" not in card.args:
                card.args["config"] = sc.args["config"]
            new_head = [h["class_names"] for h in sc.head_specs] != [h["class_names"] for h in card.head_specs] or \
                [h["kind"] for h in sc.head_specs] != [h["kind"] for h in card.head_specs]
            tok = getattr(src_model, "tokenizer", None)
            state = src_model.state_dict()
            lineage.update({"from_classes": sc.class_names, "from_lineage": sc.lineage or None})
        else:
            if card.name != "text-transformer":
                raise SpecError(f"init.from is a transformers directory, which initialises text-transformer, not {card.name!r}",
                                got=source.uri, fix="Set model: text-transformer, or start from an aimass model.")
            cfg = json.loads((source.path / "config.json").read_text())
            if "config" not in card.args:
                card.args["config"] = cfg
            tok_dir = source.path / "tokenizer" if (source.path / "tokenizer").is_dir() else source.path
            from aimass.models.text import load_tokenizer

            tok = load_tokenizer(tok_dir)
    if card.name == "text-transformer":
        if tokenizer_dir is not None:
            from aimass.models.text import load_tokenizer

            tok = load_tokenizer(tokenizer_dir)
        elif tok is None and card.args.get("tokenizer"):
            from aimass.models.text import load_tokenizer

            tok = load_tokenizer(resolve_source(str(card.args["tokenizer"])).path if "://" in str(card.args["tokenizer"])
                                 else card.args["tokenizer"])
        if tok is None:
            raise SpecError("text-transformer needs a tokenizer", got=None,
                            fix="Set train.init.from to a model directory with its tokenizer, or modelArgs.tokenizer to a "
                                "tokenizer directory (tokenizer.json or vocab.txt).")
        if isinstance(card.args.get("config"), str):
            card.args["config"] = json.loads((Path(card.args["config"]) / "config.json").read_text()) \
                if Path(card.args["config"]).is_dir() else json.loads(Path(card.args["config"]).read_text())
    card.args.pop("tokenizer", None)
    model = build_model(card)
    if card.name == "text-transformer":
        model.set_tokenizer(tok)
    if state is not None:
        lineage.update(_load_from(model, state, new_head=new_head, what=source.uri))
    elif source is not None and source.kind == "hf":
        lineage.update(_load_hf(model, source))
    if lora:
        add_lora(model, lora)
        card.args["lora"] = dict(lora)
        model.card = card
    card.lineage = lineage
    model.card = card
    return model, card, lineage


def _load_hf(model, source: Source) -> dict[str, Any]:
    """Pretrained transformers weights (safetensors only) into a TextModel's backbone; a new classifier head."""
    from transformers import AutoModelForSequenceClassification

    if not any(source.path.glob("*.safetensors")):
        raise SpecError("the transformers directory has no .safetensors weights (pickled .bin weights are never loaded)",
                        got=sorted(p.name for p in source.path.iterdir())[:20],
                        fix="Convert the weights to safetensors (model.save_pretrained(DIR, safe_serialization=True)).")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the new head as "missing": expected here
    hf_logging.disable_progress_bar()
    try:
        pre = AutoModelForSequenceClassification.from_pretrained(
            str(source.path), config=model.backbone.config, local_files_only=True, trust_remote_code=False,
            use_safetensors=True, ignore_mismatched_sizes=True)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(f"could not load pretrained weights: {str(exc).splitlines()[0][:300]}", got=source.uri,
                        fix="init.from must be a transformers encoder saved with save_pretrained().") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    model.backbone.load_state_dict(pre.state_dict(), strict=True)
    return {"loaded_tensors": len(pre.state_dict()), "new_head": True}


# -- what trains -----------------------------------------------------------------------------------
def _match(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*{pattern}*") if not pattern.startswith("re:") \
        else re.search(pattern[3:], name) is not None


def _blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The model's repeated blocks: the longest ModuleList/Sequential of identical block types."""
    best = None
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)) and len(mod) > 1:
            types = {type(m) for m in mod}
            if len(types) == 1 and not isinstance(next(iter(mod)), (nn.Linear, nn.ReLU, nn.Dropout)) and (
                    best is None or len(mod) > len(best[1])):
                best = (name, mod)
    return best


def apply_freeze(model: nn.Module, init: dict[str, Any] | None) -> dict[str, int]:
    """Freeze by name pattern (``freeze``: globs, or ``re:REGEX``) and/or all but the last N blocks (``trainLastBlocks``).

    The head always trains. Returns trainable / total parameter counts."""
    init = init or {}
    heads = head_keys(model)
    patterns = list(init.get("freeze") or [])
    last_n = init.get("trainLastBlocks")
    frozen_prefix: set[str] = set()
    if last_n is not None:
        found = _blocks(model)
        if found is None:
            raise SpecError("trainLastBlocks: this model has no repeated blocks", fix="Freeze by name pattern instead (init.freeze).")
        bname, blocks = found
        keep = {f"{bname}.{i}." for i in range(max(0, len(blocks) - int(last_n)), len(blocks))}
        seen_kept = False
        for n, _ in model.named_parameters():
            if any(n.startswith(k) for k in keep):
                seen_kept = True
            if not seen_kept:
                frozen_prefix.add(n)
    names = [n for n, _ in model.named_parameters()]
    for pat in patterns:
        if not any(_match(n, pat) for n in names):
            raise SpecError(f"init.freeze pattern {pat!r} matches no parameter", got=pat,
                            fix=f"Parameter names look like: {', '.join(names[:4])}, ... (globs, or re:REGEX).")
    for n, p in model.named_parameters():
        if n in heads:
            continue
        if n in frozen_prefix or any(_match(n, pat) for pat in patterns):
            p.requires_grad_(False)
    return trainable_parameters(model)


def trainable_parameters(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable_params": train, "total_params": total}


def param_groups(model: nn.Module, groups: list[dict[str, Any]] | None, base_lr: float) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the first pattern a trainable parameter matches sets its learning rate."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not groups:
        return [{"params": [p for _, p in named], "lr": base_lr}]
    buckets: list[list] = [[] for _ in groups]
    rest = []
    for n, p in named:
        for i, g in enumerate(groups):
            if _match(n, g["pattern"]):
                buckets[i].append(p)
                break
        else:
            rest.append(p)
    out = [{"params": b, "lr": float(g["lr"]), "name": g["pattern"]} for b, g in zip(buckets, groups, strict=True) if b]
    if rest:
        out.append({"params": rest, "lr": base_lr, "name": "rest"})
    return out


# -- LoRA ------------------------------------------------------------------------------------------
def add_lora(model, cfg: dict[str, Any]) -> None:
    """Wrap a text model's backbone with peft LoRA adapters; only the adapters and the head train."""
    from peft import LoraConfig, get_peft_model

    from aimass.models.text import TextModel

    if not isinstance(model, TextModel):
        raise SpecError("LoRA applies to transformer models (text-transformer)", got=type(model).__name__,
                        fix="Remove init.lora, or freeze layers instead.")
    head_modules = sorted({m for m in ("classifier", "score") if any(f".{m}." in k or k.startswith(f"backbone.{m}.") for k in head_keys(model))})
    lc = LoraConfig(r=int(cfg.get("r", 8)), lora_alpha=int(cfg.get("alpha", 16)), lora_dropout=float(cfg.get("dropout", 0.0)),
                    target_modules=list(cfg.get("targetModules") or ["query", "value"]), modules_to_save=head_modules or None,
                    bias="none")
    try:
        model.backbone = get_peft_model(model.backbone, lc)
    except ValueError as exc:
        raise SpecError(f"LoRA could not be applied: {str(exc)[:300]}", got=cfg.get("targetModules"),
                        fix="Set init.lora.targetModules to linear layer names of this architecture (bert: query, value).") from None


def merge_lora(model):
    """Fold the LoRA adapters into the weights; returns the same model as a plain transformer (card updated)."""
    from aimass.models.registry import ModelCard

    bb = model.backbone
    if hasattr(bb, "merge_and_unload"):
        model.backbone = bb.merge_and_unload()
    card = ModelCard.from_dict(json.loads(json.dumps(model.card.to_dict())))
    lora = card.args.pop("lora", None)
    if lora:
        card.lineage = dict(card.lineage or {}, lora={**lora, "merged": True})
    model.card = card
    return model
