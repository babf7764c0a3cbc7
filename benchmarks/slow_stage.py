"""``services.classify`` or ``services.detect`` with an artificial cost: the benchmarks' way to make one
stage the slow one on any machine (``benchmarks/pipeline.py --classify-ms-per-face MS``,
``benchmarks/scaling.py``).

    python benchmarks/slow_stage.py classify    # env FERLIVE_BENCH_CLASSIFY_MS_PER_FACE
    python benchmarks/slow_stage.py detect      # env FERLIVE_BENCH_DETECT_MS_PER_FRAME

The real stage runs as usual; after the model (classify: per face) or the detector (detect: per frame) it
waits the given milliseconds. By default a sleep: it stands for a slower model on its own accelerator and
leaves the cores to the other stages, so what is measured is the pipeline's queueing and load balancing.
With FERLIVE_BENCH_SPIN=1 it is a busy loop instead, which competes for the cores like a heavier CPU model.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def wait(seconds: float) -> None:
    if os.environ.get("FERLIVE_BENCH_SPIN") == "1":
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    elif seconds > 0:
        time.sleep(seconds)


def main(argv: list[str]) -> int:
    stage = argv[0] if argv else "classify"
    if stage == "classify":
        from services.classify.__main__ import main as stage_main
        from shared.model import FacialExpressionModel
        delay_s = float(os.environ.get("FERLIVE_BENCH_CLASSIFY_MS_PER_FACE", "0")) / 1e3
        predict = FacialExpressionModel.predict_proba

        def slow_predict(self, faces, *args, **kwargs):
            out = predict(self, faces, *args, **kwargs)
            wait(delay_s * len(faces))
            return out
        FacialExpressionModel.predict_proba = slow_predict
    elif stage == "detect":
        from services.detect.__main__ import main as stage_main
        from shared.analyzer import FaceAnalyzer
        delay_s = float(os.environ.get("FERLIVE_BENCH_DETECT_MS_PER_FRAME", "0")) / 1e3
        detect = FaceAnalyzer.detect

        def slow_detect(self, *args, **kwargs):
            out = detect(self, *args, **kwargs)
            wait(delay_s)
            return out
        FaceAnalyzer.detect = slow_detect
    else:
        print(f"slow_stage: unknown stage {stage!r} (classify or detect)", file=sys.stderr)
        return 2
    return stage_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
