"""From a :class:`~aimass.spec.configs.data.DataConfig` to a :class:`~aimass.data.dataset.Dataset`, in every modality.

:func:`build_dataset` reads the source, checks it (errors name the file, row and column, and say how to fix
it; skips are counted where the spec allows them), builds the targets, splits the rows with a seed (stratified
on the primary classification target), fits the preprocessing on the training split only, and returns the
dataset with its split manifest (row or file ids per split, not a copy of the data), the source digest and
the statistics the data step logs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aimass.data.dataset import Dataset, TargetSpec
from aimass.data.preprocess import (
    decode_image,
    encode_table,
    fit_categorical,
    fit_numeric,
    image_stats,
)
from aimass.data.readers import fetch_source, list_image_folder, read_frame, sha256_file
from aimass.data.splits import split_indices
from aimass.exceptions import InvalidRequestError, SpecError, StepError

__all__ = ["MANIFEST_VERSION", "BuildResult", "build_dataset"]

MANIFEST_VERSION = 1


@dataclass
class BuildResult:
    """A prepared dataset plus what the data step records about it.

    Attributes:
        dataset: the arrays and the fitted preprocessing.
        manifest: ``{"version", "source", "digest", "idKind": "row"|"file", "seed", "splits": {split: [ids]}, "skipped": [...]}``.
        digest: sha256 of the source data (file bytes; for a folder, of the sorted (path, file sha256) pairs).
        metrics: counts for MLflow (rows in, skipped, dropped, per split).
        stats: what the statistics plots and table are drawn from.
    """

    dataset: Dataset
    manifest: dict[str, Any]
    digest: str
    metrics: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


def _fmt(cfg, path_hint: str) -> str:
    if cfg.format != "auto":
        return cfg.format
    if cfg.modality == "image" and (path_hint.endswith("/") or Path(path_hint.removeprefix("file://")).is_dir()):
        return "folder"
    suffix = path_hint.lower().rsplit(".", 1)[-1]
    if suffix in ("csv", "parquet", "npz", "jsonl"):
        return suffix
    if suffix in ("pq",):
        return "parquet"
    if suffix in ("json", "ndjson"):
        return "jsonl"
    if cfg.modality == "image" and path_hint.startswith("s3://"):
        return "folder"
    raise SpecError("cannot tell the file format from the extension", got=path_hint,
                    fix="Set format: csv, jsonl, parquet (or folder for an image folder).")


# -- targets ------------------------------------------------------------------------------------------------------------
def _missing_columns(frame, cols: list[str], name: str, what: str) -> None:
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise SpecError(f"{what} column {missing[0]!r} not found in {name}", got=list(map(str, frame.columns))[:20],
                        fix="Set the column names in the data step's targets/labelColumn to columns of the file.")


def _target_arrays(frame, tcfgs, name: str, missing_policy: str) -> tuple[list[TargetSpec], list[np.ndarray], np.ndarray]:
    """Targets of every row: specs, arrays, and a keep-mask of rows whose targets are all present."""
    import pandas as pd

    specs, arrays = [], []
    keep = np.ones(len(frame), dtype=bool)
    for t in tcfgs:
        cols = t.source_columns
        _missing_columns(frame, cols, name, f"target {t.name!r}:")
        if t.kind == "classification":
            col = frame[cols[0]]
            miss = col.isna().to_numpy()
            present = col[~miss]
            try:
                classes = np.unique(present.to_numpy())
            except TypeError:  # mixed types: compare as text
                classes = np.unique(present.astype(str).to_numpy())
                col = col.where(miss, col.astype(str))
            index = {v: i for i, v in enumerate(classes.tolist())}
            y = np.zeros(len(frame), dtype=np.int64)
            y[~miss] = [index[v] for v in col[~miss].tolist()]
            names = [str(c) for c in classes]
        elif t.kind == "multilabel" and t.separator is not None:
            col = frame[cols[0]]
            miss = np.zeros(len(frame), dtype=bool)  # a row with no labels is a valid multilabel row
            lists = [[] if (v is None or (isinstance(v, float) and np.isnan(v))) else
                     [p.strip() for p in str(v).split(t.separator) if p.strip()] for v in col.tolist()]
            names = sorted({p for ls in lists for p in ls})
            if not names:
                raise SpecError(f"multilabel target {t.name!r}: column {cols[0]!r} holds no labels", got=name,
                                fix=f"Join the labels of each row with {t.separator!r}.")
            index = {v: i for i, v in enumerate(names)}
            y = np.zeros((len(frame), len(names)), dtype=np.float32)
            for i, ls in enumerate(lists):
                for p in ls:
                    y[i, index[p]] = 1.0
        else:
            y = np.zeros((len(frame), len(cols)), dtype=np.float32)
            miss = np.zeros(len(frame), dtype=bool)
            for j, c in enumerate(cols):
                raw = frame[c]
                num = pd.to_numeric(raw, errors="coerce")
                bad = num.isna() & raw.notna()
                if bad.any():
                    r = int(np.flatnonzero(bad.to_numpy())[0])
                    raise SpecError(f"{name}: row {r}, column {c!r} of {t.kind} target {t.name!r} is not a number",
                                    got=str(raw.iloc[r])[:60], fix="Fix the value, or declare the target with another kind.")
                v = num.to_numpy(dtype=np.float64)
                if t.kind == "multilabel":
                    ok = np.isnan(v) | (v == 0) | (v == 1)
                    if not ok.all():
                        r = int(np.flatnonzero(~ok)[0])
                        raise SpecError(f"{name}: row {r}, column {c!r} of multilabel target {t.name!r} must be 0 or 1",
                                        got=str(raw.iloc[r])[:60], fix="Use 0/1 (or true/false) per label column.")
                miss |= np.isnan(v)
                y[:, j] = np.nan_to_num(v)
            names = list(cols)
        if miss.any():
            if missing_policy != "drop":
                r = int(np.flatnonzero(miss)[0])
                raise SpecError(f"{name}: row {r} has no value for target {t.name!r} (column {', '.join(cols)})",
                                got=int(miss.sum()), fix="Fill or remove those rows, or set clean.missing: drop to skip them.")
            keep &= ~miss
        specs.append(TargetSpec(t.name, t.kind, names, columns=list(cols), loss_weight=t.loss_weight))
        arrays.append(y)
    return specs, arrays, keep


# -- features -----------------------------------------------------------------------------------------------------------
def _column_types(frame, exclude: set[str], overrides: dict[str, str], name: str) -> tuple[list[str], list[str]]:
    import pandas as pd

    unknown = sorted(set(overrides) - set(map(str, frame.columns)))
    if unknown:
        raise SpecError(f"table.columns names columns that {name} does not have", got=unknown[:10],
                        fix=f"Columns: {', '.join(map(str, frame.columns))[:300]}.")
    numeric, categorical = [], []
    for c in frame.columns:
        c = str(c)
        if c in exclude:
            continue
        kind = overrides.get(c)
        if kind == "ignore":
            continue
        if kind is None:
            dt = frame[c].dtype
            kind = "numeric" if (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt)) else "categorical"
        if kind == "numeric":
            num = pd.to_numeric(frame[c], errors="coerce")
            bad = num.isna() & frame[c].notna()
            if bad.any():
                r = int(np.flatnonzero(bad.to_numpy())[0])
                raise SpecError(f"{name}: column {c!r} is numeric but row {r} holds a non-number", got=str(frame[c].iloc[r])[:60],
                                fix=f"Fix the value, or declare the column categorical (table.columns: {{{c}: categorical}}).")
            numeric.append(c)
        else:
            categorical.append(c)
    if not numeric and not categorical:
        raise SpecError(f"{name} has no feature columns besides the targets", got=list(map(str, frame.columns))[:20],
                        fix="Add feature columns, or check table.columns for columns set to ignore.")
    return numeric, categorical


def _summaries(frame, numeric: list[str], categorical: list[str]) -> list[dict[str, Any]]:
    import pandas as pd

    out = []
    for c in numeric:
        v = pd.to_numeric(frame[c], errors="coerce")
        out.append({"column": c, "type": "numeric", "missing": int(v.isna().sum()), "unique": int(v.nunique()),
                    "mean": _f(v.mean()), "std": _f(v.std()), "min": _f(v.min()), "max": _f(v.max()), "top": ""})
    for c in categorical:
        s = frame[c]
        vc = s.dropna().astype(str).value_counts()
        out.append({"column": c, "type": "categorical", "missing": int(s.isna().sum()), "unique": int(s.nunique()),
                    "mean": None, "std": None, "min": None, "max": None, "top": str(vc.index[0]) if len(vc) else ""})
    return out


def _f(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


# -- the split and the dataset ------------------------------------------------------------------------------------------
def _split_and_check(n: int, specs: list[TargetSpec], arrays: list[np.ndarray], cfg, seed: int):
    primary = specs[0]
    strat = arrays[0] if primary.kind == "classification" else None
    i_tr, i_val, i_te = split_indices(n, cfg.split, seed, strat=strat, class_names=primary.class_names)
    for spec, y in zip(specs, arrays, strict=True):
        if spec.kind != "classification":
            continue
        seen = set(np.unique(y[i_tr]).tolist())
        unseen = [spec.class_names[k] for k in np.unique(y).tolist() if k not in seen]
        if unseen:
            raise StepError(f"target {spec.name!r}: label {unseen[0]!r} appears only outside the training split", got=unseen[:10],
                            fix="Add examples of it, drop its rows, or stratify on this target (make it the first target).")
    return i_tr, i_val, i_te


def _assemble(x, c, specs, arrays, idx, modality, preprocess, mean, scale) -> Dataset:
    i_tr, i_val, i_te = idx
    extra = {s.name: {"train": a[i_tr], "val": a[i_val], "test": a[i_te]} for s, a in zip(specs[1:], arrays[1:], strict=True)}
    y = arrays[0]
    preprocess = dict(preprocess)
    preprocess["targets"] = [s.to_dict() for s in specs]
    return Dataset(
        x_train=x[i_tr], y_train=y[i_tr], x_val=x[i_val], y_val=y[i_val], x_test=x[i_te], y_test=y[i_te],
        class_names=list(specs[0].class_names), feature_mean=np.asarray(mean, dtype=np.float32),
        feature_scale=np.asarray(scale, dtype=np.float32), modality=modality, targets=specs, extra_y=extra,
        c_train=None if c is None else c[i_tr], c_val=None if c is None else c[i_val], c_test=None if c is None else c[i_te],
        preprocess=preprocess,
    )


def _class_counts(specs, arrays) -> dict[str, dict[str, int]]:
    out = {}
    for s, y in zip(specs, arrays, strict=True):
        if s.kind == "classification":
            out[s.name] = {n: int(k) for n, k in zip(s.class_names, np.bincount(y, minlength=len(s.class_names)), strict=True)}
        elif s.kind == "multilabel":
            out[s.name] = {n: int(k) for n, k in zip(s.class_names, y.sum(axis=0), strict=True)}
    return out


def _manifest(cfg, digest, seed, id_kind, ids, idx, skipped) -> dict[str, Any]:
    return {"version": MANIFEST_VERSION, "source": cfg.source, "digest": digest, "idKind": id_kind, "seed": seed,
            "splits": {s: sorted(ids[i] for i in part.tolist()) for s, part in zip(("train", "val", "test"), idx, strict=True)},
            "skipped": skipped}


def _sample(n: int, max_rows: int | None, seed: int) -> np.ndarray:
    if max_rows and n > max_rows:
        return np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    return np.arange(n)


# -- modalities ---------------------------------------------------------------------------------------------------------
def _build_tensor(cfg, seed, endpoint_url) -> BuildResult:
    from aimass.data.prepare import prepare
    from aimass.data.sources import load_source

    x, y, names = load_source(cfg, seed, endpoint_url=endpoint_url)
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    digest = h.hexdigest()
    ds, rep = prepare(x, y, names, cfg, seed)
    ds.targets[0].columns = [cfg.label_column] if not cfg.source.startswith(("builtin:", "synthetic")) else []
    ds.preprocess = {"targets": [t.to_dict() for t in ds.targets]}
    manifest = {"version": MANIFEST_VERSION, "source": cfg.source, "digest": digest, "idKind": "row", "seed": seed,
                "splits": rep.split_ids, "skipped": []}
    metrics = {k: float(v) for k, v in (("rows_in", rep.rows_in), ("rows_missing_dropped", rep.rows_missing_dropped),
                                         ("values_imputed", rep.values_imputed), ("duplicates_dropped", rep.duplicates_dropped),
                                         ("augmented_rows", rep.augmented_rows))}
    stats = {"class_counts": _class_counts(ds.targets, [np.concatenate([ds.y_train, ds.y_val, ds.y_test])]), "columns": [],
             "image_sizes": [], "text_lengths": []}
    return BuildResult(ds, manifest, digest, metrics, stats)


def _clean_frame(frame, cols: list[str], cfg, metrics: dict[str, float]):
    if cfg.clean.drop_duplicates and len(frame):
        dup = frame.duplicated(subset=cols).to_numpy()
        metrics["duplicates_dropped"] = float(dup.sum())
        frame = frame[~dup]
    return frame


def _build_table(cfg, seed, endpoint_url) -> BuildResult:
    src = fetch_source(cfg.source, want_dir=False, endpoint_url=endpoint_url)
    fmt = _fmt(cfg, cfg.source)
    name = Path(src.path).name
    try:
        frame = read_frame(src.path, fmt, name)
        digest = sha256_file(src.path)
    finally:
        src.cleanup()
    metrics: dict[str, float] = {"rows_in": float(len(frame))}
    frame = frame.iloc[_sample(len(frame), cfg.max_rows, seed)]
    tcfgs = cfg.target_configs()
    target_cols = {c for t in tcfgs for c in t.source_columns}
    for t in tcfgs:
        _missing_columns(frame, t.source_columns, name, f"target {t.name!r}:")
    numeric, categorical = _column_types(frame, target_cols, cfg.table.columns, name)
    frame = _clean_frame(frame, numeric + categorical + sorted(target_cols), cfg, metrics)
    feat = frame[numeric + categorical]
    if cfg.clean.missing == "error" and feat.isna().any().any():
        col = str(feat.columns[feat.isna().any().to_numpy()][0])
        r = int(np.flatnonzero(feat[col].isna().to_numpy())[0])
        raise SpecError(f"{name}: column {col!r} has missing values (first at row {r})", got=int(feat.isna().sum().sum()),
                        fix="Set clean.missing to drop, mean, median or zero.")
    specs, arrays, keep = _target_arrays(frame, tcfgs, name, cfg.clean.missing)
    if cfg.clean.missing == "drop":
        has_missing = feat.isna().any(axis=1).to_numpy()
        metrics["rows_missing_dropped"] = float((has_missing | ~keep).sum())
        keep &= ~has_missing
    frame, arrays = frame[keep], [a[keep] for a in arrays]
    metrics["values_imputed"] = float(frame[numeric].isna().sum().sum()) if cfg.clean.missing in ("mean", "median", "zero") else 0.0
    if len(frame) < 10:
        raise StepError(f"{name}: fewer than 10 rows left after cleaning", got=len(frame), fix="Use more data or clean.missing: mean.")
    ids = [int(i) for i in frame.index.tolist()]
    idx = _split_and_check(len(frame), specs, arrays, cfg, seed)
    train = frame.iloc[idx[0]]
    fill = cfg.clean.missing if cfg.clean.missing in ("mean", "median", "zero") else "mean"
    pre: dict[str, Any] = {}
    if numeric:
        pre["numeric"] = fit_numeric(train[numeric].apply(_to_num).to_numpy(dtype=np.float64), numeric, fill, cfg.normalize)
    if categorical:
        pre["categorical"] = fit_categorical(train, categorical, cfg.table.max_categories)
    x, c = encode_table(pre, frame)
    mean = pre["numeric"]["mean"] if numeric else []
    scale = pre["numeric"]["scale"] if numeric else []
    ds = _assemble(x, c, specs, arrays, idx, "table", pre, mean, scale)
    stats = {"class_counts": _class_counts(specs, arrays), "columns": _summaries(frame, numeric, categorical),
             "image_sizes": [], "text_lengths": []}
    return BuildResult(ds, _manifest(cfg, digest, seed, "row", ids, idx, []), digest, metrics, stats)


def _to_num(s):
    import pandas as pd

    return pd.to_numeric(s, errors="coerce")


def _build_text(cfg, seed, endpoint_url) -> BuildResult:
    src = fetch_source(cfg.source, want_dir=False, endpoint_url=endpoint_url)
    fmt = _fmt(cfg, cfg.source)
    if fmt not in ("csv", "jsonl", "parquet"):
        raise SpecError(f"text data must be CSV, JSONL or Parquet, got format {fmt!r}", got=cfg.source, fix="Set format: csv, jsonl or parquet.")
    name = Path(src.path).name
    try:
        frame = read_frame(src.path, fmt, name)
        digest = sha256_file(src.path)
    finally:
        src.cleanup()
    tc = cfg.text
    _missing_columns(frame, [tc.text_column], name, "text")
    metrics: dict[str, float] = {"rows_in": float(len(frame))}
    frame = frame.iloc[_sample(len(frame), cfg.max_rows, seed)]
    tcfgs = cfg.target_configs()
    target_cols = sorted({c for t in tcfgs for c in t.source_columns})
    for t in tcfgs:
        _missing_columns(frame, t.source_columns, name, f"target {t.name!r}:")
    frame = _clean_frame(frame, [tc.text_column, *target_cols], cfg, metrics)
    texts = frame[tc.text_column].tolist()
    bad = np.zeros(len(frame), dtype=bool)
    skipped = []
    for i, (rid, t) in enumerate(zip(frame.index.tolist(), texts, strict=True)):
        reason = None
        if not isinstance(t, str) or not t.strip():
            reason = "empty or missing text"
        elif len(t) > tc.max_chars:
            reason = f"text longer than {tc.max_chars} characters ({len(t)})"
        if reason:
            if tc.on_error == "error":
                raise SpecError(f"{name}: row {rid}: {reason} in column {tc.text_column!r}", got=str(t)[:60],
                                fix="Fix or remove the row, raise text.maxChars, or set text.onError: skip to skip such rows.")
            bad[i] = True
            skipped.append({"id": int(rid), "reason": reason})
    metrics["rows_skipped"] = float(bad.sum())
    frame = frame[~bad]
    specs, arrays, keep = _target_arrays(frame, tcfgs, name, cfg.clean.missing)
    frame, arrays = frame[keep], [a[keep] for a in arrays]
    if len(frame) < 10:
        raise StepError(f"{name}: fewer than 10 rows left after checks", got=len(frame), fix="Use more data.")
    x = np.array([str(t) for t in frame[tc.text_column].tolist()], dtype=str)
    ids = [int(i) for i in frame.index.tolist()]
    idx = _split_and_check(len(frame), specs, arrays, cfg, seed)
    ds = _assemble(x, None, specs, arrays, idx, "text", {"text": {"column": tc.text_column, "max_chars": tc.max_chars}}, [], [])
    stats = {"class_counts": _class_counts(specs, arrays), "columns": [], "image_sizes": [],
             "text_lengths": [len(t) for t in x.tolist()]}
    return BuildResult(ds, _manifest(cfg, digest, seed, "row", ids, idx, skipped), digest, metrics, stats)


def _decode_all(root: Path, rel_paths: list[str], ic, names_for_errors: str):
    """Decode files under ``root``; returns (images, keep-mask, skipped, original sizes)."""
    h, w = ic.size
    out = np.zeros((len(rel_paths), ic.channels, h, w), dtype=np.uint8)
    keep = np.ones(len(rel_paths), dtype=bool)
    skipped, sizes = [], []
    for i, rel in enumerate(rel_paths):
        path = (root / rel)
        try:
            if not path.resolve().is_relative_to(root.resolve()):
                raise InvalidRequestError("the path leaves the data directory", got=rel, fix="Use paths relative to the manifest.")
            try:
                blob = path.read_bytes()
            except OSError as exc:
                raise InvalidRequestError(f"cannot read the file ({exc.strerror or exc})", fix="Check the path in the manifest.") from None
            info: dict[str, Any] = {}
            out[i] = decode_image(blob, (h, w), ic.channels, ic.resize, name=rel, info=info)
            sizes.append((info["width"], info["height"]))
        except InvalidRequestError as exc:
            if ic.on_error == "error":
                msg = exc.message if exc.message.startswith(rel) else f"{rel}: {exc.message}"
                raise SpecError(f"{names_for_errors}: unreadable image {msg}", got=exc.got,
                                fix=f"{exc.fix} Or set image.onError: skip to skip unreadable images (they are counted).") from None
            keep[i] = False
            skipped.append({"id": rel, "reason": exc.message})
    return out, keep, skipped, sizes


def _folder_digest(root: Path, rel_paths: list[str]) -> str:
    h = hashlib.sha256()
    for rel in sorted(rel_paths):
        h.update(rel.encode())
        h.update(sha256_file(root / rel).encode())
    return h.hexdigest()


def _build_image(cfg, seed, endpoint_url) -> BuildResult:
    downloads: list = []
    try:
        return _build_image_from(cfg, seed, endpoint_url, downloads)
    finally:
        for d in downloads:
            d.cleanup()


def _build_image_from(cfg, seed, endpoint_url, downloads: list) -> BuildResult:
    import pandas as pd

    ic = cfg.image
    fmt = _fmt(cfg, cfg.source)
    metrics: dict[str, float] = {}
    base = ""  # an S3 manifest's prefix
    if fmt == "folder":
        src = fetch_source(cfg.source, want_dir=True, endpoint_url=endpoint_url)
        downloads.append(src)
        root = src.path
        items, _ = list_image_folder(root)
        frame = pd.DataFrame({"path": [p for p, _ in items], cfg.label_column: [c for _, c in items]})
        path_col, name = "path", str(cfg.source)
        tcfgs = cfg.target_configs()
    else:
        if fmt not in ("csv", "parquet", "jsonl"):
            raise SpecError(f"an image manifest must be CSV, JSONL or Parquet, got {fmt!r}", got=cfg.source,
                            fix="Use a folder (one subdirectory per class) or a CSV/Parquet manifest of path + label columns.")
        mani = fetch_source(cfg.source, want_dir=False, endpoint_url=endpoint_url)
        downloads.append(mani)
        name = Path(mani.path).name
        frame = read_frame(mani.path, fmt, name)
        path_col = ic.path_column
        _missing_columns(frame, [path_col], name, "image path")
        if cfg.source.startswith("s3://"):
            base = cfg.source.rsplit("/", 1)[0] + "/"
            src = fetch_source(base, want_dir=True, endpoint_url=endpoint_url)
            downloads.append(src)
            root = src.path
        else:
            root = mani.path.parent
        tcfgs = cfg.target_configs()
        for t in tcfgs:
            _missing_columns(frame, t.source_columns, name, f"target {t.name!r}:")
        frame = frame.assign(**{path_col: frame[path_col].astype(str)})
    metrics["rows_in"] = float(len(frame))
    frame = frame.iloc[_sample(len(frame), ic.max_images or cfg.max_rows, seed)].reset_index(drop=True)
    rel_paths = [str(p).replace("\\", "/") for p in frame[path_col].tolist()]
    x, keep, skipped, sizes = _decode_all(root, rel_paths, ic, name)
    metrics["images_skipped"] = float((~keep).sum())
    digest = _folder_digest(root, [p for p, k in zip(rel_paths, keep, strict=True) if k])
    frame, x = frame[keep].reset_index(drop=True), x[keep]
    specs, arrays, tkeep = _target_arrays(frame, tcfgs, name, cfg.clean.missing)
    frame, x, arrays = frame[tkeep].reset_index(drop=True), x[tkeep], [a[tkeep] for a in arrays]
    if len(frame) < 10:
        raise StepError(f"{name}: fewer than 10 readable images", got=len(frame), fix="Add images (or fix the unreadable ones).")
    ids = [str(p).replace("\\", "/") for p in frame[path_col].tolist()]
    idx = _split_and_check(len(frame), specs, arrays, cfg, seed)
    if cfg.normalize == "standard":
        mean, std = image_stats(x[idx[0]])
    else:
        mean, std = [0.0] * ic.channels, [1.0] * ic.channels
    pre = {"image": {"size": list(ic.size), "channels": ic.channels, "mean": mean, "std": std, "resize": ic.resize}}
    ds = _assemble(x, None, specs, arrays, idx, "image", pre, mean, std)
    stats = {"class_counts": _class_counts(specs, arrays), "columns": [], "image_sizes": sizes, "text_lengths": []}
    manifest = _manifest(cfg, digest, seed, "file", ids, idx, skipped)
    # What streaming readers need to decode a split from the source files alone (aimass.data.streaming):
    # where the files are, and the targets of each file in the manifest's (sorted) order.
    manifest["root"] = (base if fmt != "folder" else cfg.source.rstrip("/") + "/") if cfg.source.startswith("s3://") \
        else str(root.resolve())
    manifest["labels"] = {}
    for s, part in zip(("train", "val", "test"), idx, strict=True):
        order = sorted(part.tolist(), key=lambda i: ids[i])
        manifest["labels"][s] = {t.name: a[order].tolist() for t, a in zip(specs, arrays, strict=True)}
    return BuildResult(ds, manifest, digest, metrics, stats)


def build_dataset(cfg, seed: int, endpoint_url: str | None = None) -> BuildResult:
    """Read, check, split and preprocess the data a :class:`~aimass.spec.configs.data.DataConfig` names."""
    builder = {"tensor": _build_tensor, "table": _build_table, "text": _build_text, "image": _build_image}[cfg.modality]
    res = builder(cfg, seed, endpoint_url)
    ds = res.dataset
    res.metrics.update({f"rows_{k}": float(v) for k, v in
                        {"train": len(ds.y_train), "val": len(ds.y_val), "test": len(ds.y_test)}.items()})
    return res
