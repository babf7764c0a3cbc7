"""How confident a teacher is on Training (what distillation sees) versus PublicTest, and which temperature
fits its PublicTest probabilities best (lowest log-loss): is softening with T > 1 needed at all?

    python benchmarks/teacher_calibration.py [--teacher shared/bundled_model]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from training.data import load_fer2013
    from training.distill import soften, teacher_probabilities

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="shared/bundled_model", help="exported model directory")
    a = p.parse_args(argv)
    data = load_fer2013()
    for split in ("Training", "PublicTest"):
        part = data.split(split)
        probs = teacher_probabilities(a.teacher, part.faces)
        top = {t: float(soften(probs, t).max(1).mean()) for t in (1, 2, 4)}
        print(f"{split:10} n={len(part.labels)} accuracy {float((probs.argmax(1) == part.labels).mean()):.3f} "
              + " ".join(f"mean top probability at T={t}: {v:.3f}" for t, v in top.items()))
        if split == "PublicTest":
            for t in (0.8, 1.0, 1.2, 1.5, 2.0):
                q = soften(probs, t)
                print(f"  T={t}: PublicTest log-loss {-np.log(q[np.arange(len(q)), part.labels] + 1e-8).mean():.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
