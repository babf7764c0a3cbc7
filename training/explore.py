"""A first look at FER2013: faces per class and split, sample faces per expression, the class balance,
and one batch through the models' augmentation block.

    python -m training explore --data ../shared/datasets/fer2013/fer2013-sample.csv --out out/explore
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shared.labels import EMOTIONS, NUM_CLASSES

if TYPE_CHECKING:  # matplotlib and keras stay out of import time
    from matplotlib.figure import Figure

    from training.augment import AugmentConfig
    from training.data import FerData

log = logging.getLogger(__name__)

SAMPLES_PNG = "samples.png"
BALANCE_PNG = "class_balance.png"
AUGMENTED_PNG = "augmented.png"
SPLIT_ORDER: tuple[str, ...] = ("Training", "PublicTest", "PrivateTest", "Test")


def _splits(data: "FerData") -> list[str]:
    present = set(data.splits.tolist())
    return [s for s in SPLIT_ORDER if s in present] + sorted(present - set(SPLIT_ORDER))


def counts_table(data: "FerData") -> str:
    """Faces per class (rows) and split (columns), with totals, as aligned plain text."""
    splits = _splits(data)
    counts = data.counts()
    cols = splits + ["total"]
    rows = []
    for c, name in enumerate(EMOTIONS):
        per = [counts[s][c] for s in splits]
        rows.append([name] + per + [sum(per)])
    col_tot = [sum(counts[s]) for s in splits]
    rows.append(["total"] + col_tot + [sum(col_tot)])
    unlabelled = int((data.labels < 0).sum())
    width = max(len(c) for c in cols + ["12345"])
    lines = [f"{'class':<10}" + "".join(f"{c:>{width + 2}}" for c in cols)]
    for r in rows:
        if r[0] == "total":
            lines.append("-" * len(lines[0]))
        lines.append(f"{r[0]:<10}" + "".join(f"{v:>{width + 2}}" for v in r[1:]))
    if unlabelled:
        lines.append(f"(+ {unlabelled} unlabelled faces)")
    return "\n".join(lines)


def plot_samples(data: "FerData", per_class: int = 8, seed: int = 0) -> "Figure":
    """A grid of random faces: one row per expression, `per_class` columns (blank where a class has fewer)."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(1.0 * per_class + 1.2, 1.0 * NUM_CLASSES))
    axes = fig.subplots(NUM_CLASSES, per_class, squeeze=False)
    for c, name in enumerate(EMOTIONS):
        idx = np.flatnonzero(data.labels == c)
        pick = rng.choice(idx, size=min(per_class, idx.size), replace=False) if idx.size else []
        for j, ax in enumerate(axes[c]):
            ax.set_xticks([]); ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if j < len(pick):
                ax.imshow(data.faces[pick[j]], cmap="gray", vmin=0, vmax=255)
        axes[c, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle("FER2013: sample faces per expression")
    fig.subplots_adjust(left=0.1, right=0.99, bottom=0.01, top=0.93, wspace=0.05, hspace=0.05)
    return fig


def plot_balance(data: "FerData") -> "Figure":
    """Grouped bars: faces per expression, one bar per split."""
    from matplotlib.figure import Figure

    splits = _splits(data)
    counts = data.counts()
    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    x = np.arange(NUM_CLASSES)
    w = 0.8 / max(1, len(splits))
    for i, s in enumerate(splits):
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * w, counts[s], w, label=f"{s} ({sum(counts[s])})")
        ax.bar_label(bars, fontsize=7, padding=1)
    ax.set_xticks(x, EMOTIONS)
    ax.set_ylabel("faces")
    ax.set_title("FER2013 class balance per split")
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, max(max(counts[s]) for s in splits) * 1.12 + 1)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(splits), frameon=False)
    fig.tight_layout()
    return fig


def augment_batch(faces_gray: np.ndarray, cfg: "AugmentConfig | None" = None, seed: int = 0) -> np.ndarray:
    """uint8 (N,48,48) faces through the models' augmentation block with training=True -> float (N,48,48)
    in [0,1]."""
    from shared.preprocess import to_model_input
    from training.augment import AugmentConfig, build_augmentation

    block = build_augmentation(cfg if cfg is not None else AugmentConfig(), seed=seed)
    x = to_model_input(faces_gray)
    out = np.asarray(block(x, training=True)) if block is not None and block.layers else x
    return np.clip(out[..., 0], 0.0, 1.0)


def plot_augmented(data: "FerData", n: int = 16, cfg: "AugmentConfig | None" = None,
                   seed: int = 0) -> "Figure":
    """One training batch of n faces: each original above its augmented version."""
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    labelled = np.flatnonzero(data.labels >= 0)
    pool = labelled if labelled.size else np.arange(len(data))
    idx = rng.choice(pool, size=min(n, pool.size), replace=False)
    faces = data.faces[idx]
    aug = augment_batch(faces, cfg, seed)
    cols = min(8, len(idx))
    pairs = -(-len(idx) // cols)
    fig = Figure(figsize=(1.1 * cols, 2.2 * pairs + 0.4))
    axes = fig.subplots(2 * pairs, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        r, col = divmod(k, cols)
        i = (r // 2) * cols + col
        if i >= len(idx):
            continue
        if r % 2 == 0:
            ax.imshow(faces[i], cmap="gray", vmin=0, vmax=255)
            label = int(data.labels[idx[i]])
            ax.set_title(EMOTIONS[label] if label >= 0 else "?", fontsize=8)
        else:
            ax.imshow(aug[i], cmap="gray", vmin=0.0, vmax=1.0)
    fig.suptitle("one augmented batch (each face above its augmented version)")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, wspace=0.05, hspace=0.3)
    return fig


def explore(data: "FerData", out: str | Path, seed: int = 0) -> dict[str, Path]:
    """Write the three PNGs to `out`; returns their paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"samples": out / SAMPLES_PNG, "balance": out / BALANCE_PNG, "augmented": out / AUGMENTED_PNG}
    for key, fig in (("samples", plot_samples(data, seed=seed)), ("balance", plot_balance(data)),
                     ("augmented", plot_augmented(data, seed=seed))):
        fig.savefig(paths[key], dpi=90)
    return paths


def add_cli(sub) -> None:
    p = sub.add_parser("explore", help="counts per class and split, sample faces, class balance, augmentation",
                       description="Print faces per class and split; write sample faces, a class-balance "
                                   "chart and one augmented batch as PNGs.")
    p.add_argument("--data", default=None, help="FER2013 CSV, image-folder tree or zip (default: ../shared's zip)")
    p.add_argument("--out", default="out/explore", help="folder for the PNGs (default: out/explore)")
    p.add_argument("--seed", type=int, default=0, help="which faces to show")
    p.set_defaults(func=_cmd_explore)


def _cmd_explore(a) -> int:
    from training.data import load_fer2013

    data = load_fer2013(a.data)
    print(f"{len(data)} faces")
    print(counts_table(data))
    for name, path in explore(data, a.out, seed=a.seed).items():
        print(f"wrote {name}: {path}")
    return 0
