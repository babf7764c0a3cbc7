"""Scaling of the worker pools: throughput with 1, 2 and 4 classify workers where classify is the slow
stage, and with 1, 2 and 4 detect workers for 4 sources, each step the real pipeline processes
(``benchmarks/pipeline.py``'s ``run_pipeline``) at full rate (capture as fast as the pipeline takes).

    python benchmarks/scaling.py                                  # both tables (about 3 minutes)
    python benchmarks/scaling.py --part classify --classify-ms-per-face 20
    python benchmarks/scaling.py --part detect --detect-ms-per-frame 15 --affinity any pinned
    python benchmarks/scaling.py --spin                           # the artificial cost burns CPU instead

Classify is made the slow stage with ``benchmarks/slow_stage.py`` (the real model, then a wait per face),
detect likewise (a wait per frame after the real detector): by default the wait is a sleep, a model on its
own accelerator, so a 2-core machine can show how the pool scales; ``--spin`` makes it a busy loop, which
shows what 2 cores allow a CPU-bound stage. Every step prints frames/s, the speed-up over 1 worker, the
share of each worker, p50 capture->web and, for the detect part (4 "demo" sources: a real photo of one
person, moving smoothly), each source's frames/s and how many track ids its one face got: more than one
means tracking broke when frames of one source went to different workers. ``--affinity`` compares "any" (the newest frame of a source goes to
whichever detect worker is free) with "pinned" (a source stays on one worker).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.inference import machine_info  # noqa: E402
from benchmarks.pipeline import make_frames, run_pipeline, write_video  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", nargs="+", default=["classify", "detect"], choices=["classify", "detect"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per step")
    ap.add_argument("--classify-ms-per-face", type=float, default=20.0)
    ap.add_argument("--detect-ms-per-frame", type=float, default=15.0)
    ap.add_argument("--sources", type=int, default=4, help="sources of the detect part")
    ap.add_argument("--affinity", nargs="+", default=["any", "pinned"], choices=["any", "pinned"])
    ap.add_argument("--spin", action="store_true", help="the artificial cost is a busy loop, not a sleep")
    ap.add_argument("--model-dir", default="", help="exported model ('' = bundled)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.spin:
        os.environ["FERLIVE_BENCH_SPIN"] = "1"
    results: dict = {"cpus": os.cpu_count(), "load": os.getloadavg()[0], "machine": machine_info(),
                     "command": " ".join(["python"] + sys.argv), "spin": args.spin, "steps": []}
    print(f"machine: {results['machine']['label']}, {results['cpus']} CPUs, load {results['load']:.1f}; "
          f"artificial cost: {'busy loop' if args.spin else 'sleep'}")
    tmp = Path(tempfile.mkdtemp(prefix="flscale"))
    video = write_video(make_frames(1, "people"), tmp / "people1.avi")

    def step(part: str, pool: int, base: dict, **kw) -> dict:
        r = run_pipeline(video, args.model_dir, fps=0.0, seconds=args.seconds, **kw)
        r.update(part=part, pool_workers=pool, **base)
        results["steps"].append(r)
        return r

    def line(r: dict, one: float) -> str:
        pool = r["per_worker_frames"][r["part"]]
        return (f"{r['part']:<8} {r.get('affinity', ''):<6} {r['pool_workers']} worker(s) {r['fps']:>6.1f} fps  "
                f"x{r['fps'] / one if one else 0:.2f}  per worker {pool}  "
                f"p50 capture->web {r['latency_ms'].get('to_web', {}).get('p50')} ms"
                + (f"  per source fps {list(r['per_source_fps'].values())}  track ids per source "
                   f"{list(r['track_ids_per_source'].values())}  out of order {r['annotate_out_of_order']}"
                   if r["part"] == "detect" else ""))

    if "classify" in args.part:
        one = 0.0
        for w in args.workers:
            r = step("classify", w, {}, workers=w, classify_ms_per_face=args.classify_ms_per_face)
            one = one or r["fps"]
            print(line(r, one), flush=True)
    if "detect" in args.part:
        for affinity in args.affinity:
            one = 0.0
            for w in args.workers:
                r = step("detect", w, {"affinity": affinity}, workers=2, detect_workers=w, sources=args.sources,
                         source="demo",
                         detect_ms_per_frame=args.detect_ms_per_frame,
                         extra_env={"FERLIVE_DETECT_AFFINITY": affinity})
                r["affinity"] = affinity
                one = one or r["fps"]
                print(line(r, one), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
