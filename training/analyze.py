"""`ferlive analyze`: recorded videos (or a camera / stream for a while) -> annotated video, CSV, summary, figures.

    ferlive analyze interview.mp4 --out out/interview
    ferlive analyze a.mp4 b.mkv --out out/videos --every 2 --workers 2 --smooth 0.5
    ferlive analyze 0 --duration 30 --out out/camera            # the first camera, 30 s

One output folder per input (the folder itself for a single input, else a sub-folder named after each
input): annotated.webm, faces.csv, summary.json, timeline_track<N>.png per track and overview.png. The work
is shared.video.analyze_video (the web app's video jobs run the same); no TensorFlow is imported.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def add_cli(sub) -> None:
    p = sub.add_parser("analyze", help="analyse recorded videos: annotated video, CSV per frame and face, summary",
                       description="Every face of every analysed frame, tracked across frames, written as an "
                                   "annotated video (VP8 WebM at the source's frame rate and size), a CSV row "
                                   "per frame per face, a JSON summary per track and timeline figures. "
                                   "Ctrl-C keeps everything written up to that point valid.")
    p.add_argument("inputs", nargs="+", metavar="VIDEO", help="video files; a camera index or stream URL needs --duration")
    p.add_argument("--out", required=True, help="output folder (one sub-folder per input when several are given)")
    p.add_argument("--every", type=int, default=1, help="analyse every Nth frame (default 1: all)")
    p.add_argument("--start", type=float, default=0.0, help="start at this many seconds")
    p.add_argument("--end", type=float, default=None, help="stop after this many seconds of the input")
    p.add_argument("--duration", type=float, default=None, help="seconds to record from a camera or stream")
    p.add_argument("--no-video", action="store_true", help="tables and figures only, no annotated video")
    p.add_argument("--no-figures", action="store_true", help="no PNG timelines")
    p.add_argument("--smooth", type=float, nargs="?", const=0.5, default=None, metavar="ALPHA",
                   help="smooth each track's probabilities with the live pipeline's EMA (weight of the newest "
                        "frame; 0.5 when given without a value); default: each frame's own probabilities")
    p.add_argument("--workers", type=int, default=1, help="analysis processes (results identical to one)")
    p.add_argument("--model-dir", default=None, help="exported model directory (default: the bundled model)")
    p.add_argument("--detector", default=None, help="detector kind (default: the pipeline's)")
    p.set_defaults(func=_cmd_analyze)


def _progress_bar(name: str):
    from tqdm import tqdm

    bar = tqdm(desc=name, unit="frame", dynamic_ncols=True, file=sys.stderr, disable=None)

    def update(done: int, total: int | None, _elapsed: float) -> None:
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
    return bar, update


def _cmd_analyze(a) -> int:
    from shared.video import AnalyzeOptions, VideoError, analyze_video

    try:
        options = AnalyzeOptions(every=a.every, start=a.start, end=a.end, duration=a.duration,
                                 video=not a.no_video, smooth=a.smooth, workers=a.workers, figures=not a.no_figures)
    except ValueError as e:
        raise SystemExit(f"ferlive analyze: {e}") from None
    out = Path(a.out)
    failed = 0
    for source in a.inputs:
        target = out if len(a.inputs) == 1 else out / Path(str(source)).stem
        bar, progress = _progress_bar(Path(str(source)).name)
        try:
            summary = analyze_video(source, target, options, model_dir=a.model_dir, detector_kind=a.detector,
                                    progress=progress)
        except VideoError as e:
            bar.close()
            print(f"ferlive analyze: {e}", file=sys.stderr)
            failed += 1
            continue
        except KeyboardInterrupt:
            bar.close()
            return 130
        bar.close()
        interrupted = not summary["complete"] and not summary.get("error")
        state = "interrupted (outputs valid up to here)" if interrupted else "done"
        print(f"{source}: {state}, {summary['frames_analysed']} frames analysed, {summary['faces_seen']} face "
              f"track(s), {summary['speed']['frames_per_s']} frames/s -> {target}")
        if summary.get("error"):
            print(f"ferlive analyze: {summary['error']}", file=sys.stderr)
            failed += 1
        if interrupted:
            return 130
    return 1 if failed else 0
