"""`ferlive analyze` / shared.video on short real videos: FER2013 faces placed into frames, one face per
segment at the same place, then frames with no face. The CSV, timestamps, track ids, summary, the output
video (reopened, frames counted), figures, identical results with two workers, Ctrl-C, no-face and
unreadable inputs."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from shared.labels import EMOTIONS
from shared.synthetic import place_faces, write_video
from shared.video import (CSV_FILE, OVERVIEW_FILE, SUMMARY_FILE, VIDEO_FILE, AnalyzeOptions, FrameAnalyzer,
                          VideoError, analyze_video, csv_header)

ROOT = Path(__file__).resolve().parents[1]
FPS = 10
PER_FACE = 6
BOX = [(200, 110, 200, 200)]


def _segment_frames(faces: list[np.ndarray], blank: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    background = np.full((480, 640, 3), 110, np.uint8)
    frames = []
    for face in faces:
        frame, _ = place_faces([face], rng=rng, background=background, boxes_xywh=np.array(BOX))
        frames += [frame] * PER_FACE
    return frames + [background] * blank


@pytest.fixture(scope="module")
def analyzer():
    return FrameAnalyzer()


@pytest.fixture(scope="module")
def faces(sample_data, analyzer):
    """Three sample faces the analyzer finds at BOX (placed and read back through the video codec)."""
    found = []
    for face in sample_data.faces:
        frame, _ = place_faces([face], background=np.full((480, 640, 3), 110, np.uint8), boxes_xywh=np.array(BOX))
        frame = cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_COLOR)
        if len(analyzer(frame)) == 1:
            found.append(face)
            if len(found) == 3:
                return found
    pytest.fail("the detector found fewer than 3 sample faces at BOX")


@pytest.fixture(scope="module")
def clip(faces, tmp_path_factory) -> Path:
    return write_video(_segment_frames(faces), tmp_path_factory.mktemp("clip") / "clip.mp4", fps=FPS)


def _rows(out: Path) -> list[dict]:
    with open(out / CSV_FILE, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_summary_video_and_figures(clip, analyzer, tmp_path):
    out = tmp_path / "out"
    summary = analyze_video(str(clip), out, AnalyzeOptions())
    rows = _rows(out)
    assert list(rows[0].keys()) == csv_header()
    assert len(rows) == 3 * PER_FACE == summary["face_rows"]
    # time from the container's timestamps: frame k at k / fps
    for r in rows:
        assert float(r["time_s"]) == pytest.approx(int(r["frame"]) / FPS, abs=1e-3)
    # one track per face: a new face at the same place starts its own track
    tracks = [int(r["track_id"]) for r in rows]
    assert [len(set(tracks[k * PER_FACE:(k + 1) * PER_FACE])) for k in range(3)] == [1, 1, 1]
    assert len(set(tracks)) == 3 and summary["faces_seen"] == 3
    # each row's probabilities are the analyzer's for that frame (no smoothing by default)
    cap = cv2.VideoCapture(str(clip))
    for k in range(3 * PER_FACE):
        ok, frame = cap.read()
        ff = analyzer(frame)
        np.testing.assert_allclose([float(rows[k][e]) for e in EMOTIONS], ff.probs[0], atol=1e-3)
        assert rows[k]["emotion"] == EMOTIONS[int(np.argmax(ff.probs[0]))]
        assert [int(rows[k][c]) for c in "xywh"] == ff.boxes_xywh[0].tolist()
    cap.release()
    assert summary["complete"] and summary["frames_read"] == summary["frames_analysed"] == 3 * PER_FACE + 4
    for tid, t in summary["tracks"].items():
        assert t["frames"] == PER_FACE and t["time_on_screen_s"] == pytest.approx(PER_FACE / FPS, abs=1e-3)
        assert sum(t["share"].values()) == pytest.approx(1, abs=1e-3) and t["dominant_emotion"] in EMOTIONS
    # the annotated video: same size, frame rate and number of frames, readable
    video = cv2.VideoCapture(str(out / VIDEO_FILE))
    assert video.isOpened()
    assert (int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(video.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (640, 480)
    assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS, rel=0.01)
    n = 0
    while video.read()[0]:
        n += 1
    assert n == summary["frames_read"]
    assert json.loads((out / SUMMARY_FILE).read_text()) == summary
    assert (out / OVERVIEW_FILE).stat().st_size > 1000
    assert len(list(out.glob("timeline_track*.png"))) == 3


def test_two_workers_give_identical_results(clip, tmp_path):
    one = analyze_video(str(clip), tmp_path / "one", AnalyzeOptions(video=False, figures=False))
    two = analyze_video(str(clip), tmp_path / "two", AnalyzeOptions(video=False, figures=False, workers=2))
    assert (tmp_path / "one" / CSV_FILE).read_text() == (tmp_path / "two" / CSV_FILE).read_text()
    assert one["tracks"] == two["tracks"] and two["speed"]["workers"] == 2


def test_every_start_and_end(clip, tmp_path):
    s = analyze_video(str(clip), tmp_path / "o", AnalyzeOptions(every=2, start=0.3, end=1.2, video=False, figures=False))
    rows = _rows(tmp_path / "o")
    times = [float(r["time_s"]) for r in rows]
    assert times and min(times) >= 0.3 - 1e-6 and max(times) <= 1.2 + 1e-6
    assert s["frames_analysed"] == (s["frames_read"] + 1) // 2
    assert len({int(r["frame"]) % 2 for r in rows}) == 1


def test_video_without_faces_gives_a_header_only_csv(tmp_path):
    path = write_video([np.full((240, 320, 3), 90, np.uint8)] * 5, tmp_path / "empty.mp4", fps=FPS)
    s = analyze_video(str(path), tmp_path / "o", AnalyzeOptions())
    assert (tmp_path / "o" / CSV_FILE).read_text().strip() == ",".join(csv_header())
    assert s["faces_seen"] == 0 and "no face" in s["note"] and s["frames_read"] == 5


def test_unreadable_and_truncated_files_are_clear_errors(clip, tmp_path):
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    with pytest.raises(VideoError, match="notes.mp4"):
        analyze_video(str(junk), tmp_path / "o1")
    with pytest.raises(VideoError, match="no such file"):
        analyze_video(str(tmp_path / "missing.mp4"), tmp_path / "o2")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[:2000])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run([sys.executable, "-m", "training", "analyze", str(junk), str(cut), "--out", str(tmp_path / "o3")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "notes.mp4" in res.stderr and "cut.mp4" in res.stderr


@pytest.mark.slow
def test_ctrl_c_leaves_a_playable_video_and_complete_rows(faces, tmp_path):
    long_clip = write_video(_segment_frames(faces * 40, blank=0), tmp_path / "long.mp4", fps=FPS)
    out = tmp_path / "o"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    # A shell's background job (`make test &`) starts with SIGINT ignored, which children inherit and Python
    # then never turns into KeyboardInterrupt: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "training", "analyze", str(long_clip), "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not ((out / CSV_FILE).exists() and (out / CSV_FILE).stat().st_size > 3000):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert not summary["complete"] and 0 < summary["frames_read"] < 3 * 40 * PER_FACE
    rows = _rows(out)
    assert len(rows) == summary["face_rows"] and all(None not in r.values() and r["emotion"] in EMOTIONS for r in rows)
    video = cv2.VideoCapture(str(out / VIDEO_FILE))
    n = 0
    while video.read()[0]:
        n += 1
    assert n == summary["frames_read"]


def test_live_sources_need_a_duration(tmp_path):
    with pytest.raises(VideoError, match="--duration"):
        analyze_video("rtsp://127.0.0.1:9/none", tmp_path / "o", AnalyzeOptions())


def test_variable_frame_rate_times_come_from_the_container(faces, tmp_path):
    """A VFR file (frames shown 0.1-0.5 s each, made with the ffmpeg binary the imageio-ffmpeg wheel ships):
    time_s follows the container's timestamps, not frame / fps."""
    import imageio_ffmpeg
    durations = [0.1, 0.1, 0.5, 0.1, 0.3, 0.2]
    frame, _ = place_faces([faces[0]], background=np.full((480, 640, 3), 110, np.uint8), boxes_xywh=np.array(BOX))
    lines = []
    for i, d in enumerate(durations):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), frame)
        lines += [f"file 'f{i}.png'", f"duration {d}"]
    lines.append(f"file 'f{len(durations) - 1}.png'")  # the concat demuxer's way to honour the last duration
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    video = tmp_path / "vfr.mkv"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "concat", "-safe", "0",
                    "-i", str(tmp_path / "list.txt"), "-fps_mode", "vfr", "-c:v", "mpeg4", "-q:v", "2", str(video)],
                   check=True, timeout=60)
    s = analyze_video(str(video), tmp_path / "o", AnalyzeOptions(video=False, figures=False))
    times = [float(r["time_s"]) for r in _rows(tmp_path / "o")]
    expected = np.concatenate([[0.0], np.cumsum(durations)])
    assert len(times) == s["frames_read"] == len(expected)
    np.testing.assert_allclose(times, expected, atol=0.045)  # the encoder's 1/25 s time base rounds them
    fps = s["video"]["fps"]
    assert max(abs(t - k / fps) for k, t in enumerate(times)) > 0.3  # frame / fps would be far off
