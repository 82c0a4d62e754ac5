"""Seeded train/val/test splits as index arrays, stratified on a class column where the task allows."""

from __future__ import annotations

import numpy as np

from aimass.exceptions import SpecError

__all__ = ["split_indices"]


def split_indices(n: int, cfg, seed: int, strat: np.ndarray | None = None,
                  class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (into ``0..n-1``) of the train, val and test splits.

    ``strat`` (int class codes, or None) stratifies the split when ``cfg.stratify`` is set: every class keeps its
    share in every split. A class with a single row cannot be stratified and is an error naming the class. The
    result depends only on ``n``, the labels, the shares and ``seed`` (scikit-learn's seeded shuffle), so the
    same data splits the same way on every machine.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    use = strat if (cfg.stratify and strat is not None) else None
    if use is not None:
        counts = np.bincount(use)
        small = [(i, int(c)) for i, c in enumerate(counts) if 0 < c < 2]
        if small:
            i, c = small[0]
            name = class_names[i] if class_names and i < len(class_names) else str(i)
            raise SpecError(f"class {name!r} has {c} example(s), too few to stratify the split", got=len(small),
                            fix="Add examples of that class, drop its rows, or set split.stratify: false.")
    rest = cfg.val + cfg.test
    try:
        tr, rem = train_test_split(idx, test_size=rest, random_state=seed, stratify=use)
    except ValueError as exc:
        raise SpecError(f"cannot split {n} rows {'stratified ' if use is not None else ''}into "
                        f"{cfg.train:g}/{cfg.val:g}/{cfg.test:g}: {exc}",
                        fix="Use more rows, larger val/test shares, or split.stratify: false.") from None
    if cfg.test == 0:
        return tr, rem, rem[:0]
    if cfg.val == 0:
        return tr, rem[:0], rem
    use2 = None
    if use is not None:
        rc = np.bincount(use[rem])
        use2 = use[rem] if rc[rc > 0].min() >= 2 else None
    try:
        va, te = train_test_split(rem, test_size=cfg.test / rest, random_state=seed, stratify=use2)
    except ValueError:  # too few held-out rows per class to stratify val/test: split them at random
        va, te = train_test_split(rem, test_size=cfg.test / rest, random_state=seed)
    return tr, va, te
