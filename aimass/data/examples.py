"""Small example data sets for the pipelines under ``pipelines/`` (generated, so no binaries are committed).

    python -m aimass.data.examples pipelines/examples/data

writes ``shapes/`` (an image folder: one subdirectory per class of rendered circles, squares and triangles
in PNG and JPEG), ``customers.csv`` (a table with numeric and categorical columns, missing values, a class
target and a numeric target) and ``diabetes.csv`` (scikit-learn's diabetes regression data). The text set,
``pipelines/examples/data/reviews.jsonl``, is committed as written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

__all__ = ["make_all", "make_customers", "make_diabetes", "make_shapes"]

SHAPES = ("circle", "square", "triangle")


def make_shapes(root: str | Path, per_class: int = 30, seed: int = 0, size_range: tuple[int, int] = (28, 56)) -> Path:
    """A class-per-subdirectory image folder of rendered shapes, of varying size, colour and position."""
    from PIL import Image, ImageDraw

    root = Path(root)
    rng = np.random.default_rng(seed)
    for cls in SHAPES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = int(rng.integers(size_range[0], size_range[1] + 1))
            bg = tuple(int(v) for v in rng.integers(0, 80, 3))
            fg = tuple(int(v) for v in rng.integers(150, 256, 3))
            img = Image.new("RGB", (s, s), bg)
            d = ImageDraw.Draw(img)
            r = s * float(rng.uniform(0.25, 0.4))
            cx, cy = s / 2 + rng.uniform(-s / 10, s / 10), s / 2 + rng.uniform(-s / 10, s / 10)
            if cls == "circle":
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
            elif cls == "square":
                d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fg)
            else:
                d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
            if i % 3 == 0:
                img.save(root / cls / f"{cls}_{i:03d}.jpg", quality=92)
            else:
                img.save(root / cls / f"{cls}_{i:03d}.png")
    return root


def make_customers(path: str | Path, n: int = 400, seed: int = 0) -> Path:
    """A customer table: numeric and categorical columns with missing values; ``churn`` (class) and ``spend`` (number)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.normal(42, 12, n).round(0)
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], n)
    tenure = rng.gamma(2.0, 12.0, n).round(1)
    calls = rng.poisson(2, n)
    risk = 0.9 * (plan == "basic") - 0.04 * tenure + 0.35 * calls + rng.normal(0, 0.5, n)
    churn = np.where(risk > np.median(risk), "yes", "no")
    spend = 20 + 15 * (plan == "plus") + 40 * (plan == "pro") + 0.3 * tenure + rng.normal(0, 4, n)
    df = pd.DataFrame({"age": age, "plan": plan, "region": region, "tenure_months": tenure, "support_calls": calls,
                       "churn": churn, "spend": spend.round(2)})
    for col, frac in (("age", 0.08), ("region", 0.05), ("tenure_months", 0.04)):
        df.loc[rng.random(n) < frac, col] = None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def make_diabetes(path: str | Path) -> Path:
    """scikit-learn's diabetes data (442 rows, 10 features) as CSV with the numeric target ``progression``."""
    from sklearn.datasets import load_diabetes

    b = load_diabetes(as_frame=True)
    df = b.frame.rename(columns={"target": "progression"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return path


def make_all(root: str | Path) -> Path:
    """Every generated example under ``root``."""
    root = Path(root)
    make_shapes(root / "shapes")
    make_customers(root / "customers.csv")
    make_diabetes(root / "diabetes.csv")
    return root


if __name__ == "__main__":  # pragma: no cover
    out = make_all(sys.argv[1] if len(sys.argv) > 1 else "pipelines/examples/data")
    print(f"wrote example data under {out}")
