"""``services.classify`` with an artificial cost per face: the benchmark's way to make classify the slow
stage on any machine (``benchmarks/pipeline.py --classify-ms-per-face MS``).

The model runs as usual; after it, the worker sleeps MS milliseconds per face (env
FERLIVE_BENCH_CLASSIFY_MS_PER_FACE). A sleep, not a busy loop: it stands for a slower model on its own
accelerator and leaves the 2 cores to the other stages, so what is measured is the pipeline's queueing.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from services.classify.__main__ import main as classify_main
    from shared.model import FacialExpressionModel
    delay_s = float(os.environ.get("FERLIVE_BENCH_CLASSIFY_MS_PER_FACE", "0")) / 1e3
    predict = FacialExpressionModel.predict_proba

    def slow_predict(self, faces, *args, **kwargs):
        out = predict(self, faces, *args, **kwargs)
        time.sleep(delay_s * len(faces))
        return out

    FacialExpressionModel.predict_proba = slow_predict
    return classify_main()


if __name__ == "__main__":
    sys.exit(main())
