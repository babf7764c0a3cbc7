"""Classify workers: one model call per frame with all its faces, empty frames cost nothing, bad and
stale messages are counted; the service path never imports TensorFlow."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shared.messages import Faces, Frame, decode, encode
from services.classify.worker import classify, handle


class CountingModel:
    """The real exported model, counting its calls."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def predict_proba(self, faces):
        self.calls.append(len(faces))
        return self.model.predict_proba(faces)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from shared.model import FacialExpressionModel
    return FacialExpressionModel(tiny_model_dir)


def faces_msg(sample_data, n: int, t_capture: float = 1e12) -> Faces:
    crops = sample_data.faces[:n]
    boxes = np.array([[10 + 60 * i, 20, 48, 48] for i in range(n)], np.int32).reshape(n, 4)
    return Faces(Frame("cam", 5, t_capture, b"jpg", 640, 480, [("capture", 1.0, 1.0)]), boxes, crops, job=2, run=3)


def test_all_faces_of_a_frame_in_one_call(model, sample_data):
    m = CountingModel(model)
    preds = classify(m, faces_msg(sample_data, 4))
    assert m.calls == [4]
    np.testing.assert_allclose(preds.probs, model.predict_proba(sample_data.faces[:4]), atol=1e-6)
    assert preds.probs.shape == (4, 7) and preds.probs.dtype == np.float32
    assert np.allclose(preds.probs.sum(1), 1, atol=1e-2)


def test_frame_without_faces_skips_the_model(model):
    m = CountingModel(model)
    preds = classify(m, Faces(Frame("cam", 0, 1.0, b"", 640, 480), [], []))
    assert m.calls == [] and preds.probs.shape == (0, 7)


def test_handle_round_trip_bad_and_stale(model, sample_data):
    c = Counter()
    preds = handle(model, encode(faces_msg(sample_data, 2)), c)
    back = decode(encode(preds), expect="predictions")
    assert (back.faces.job, back.faces.run, len(back.faces)) == (2, 3, 2) and c["faces"] == 2
    assert handle(model, b"\x00junk", c) is None and c["bad_messages"] == 1
    assert handle(model, encode(faces_msg(sample_data, 1).frame), c) is None and c["bad_messages"] == 2
    old = encode(faces_msg(sample_data, 1, t_capture=100.0))
    assert handle(model, old, c, max_lag_s=0.5, now=101.0) is None and c["stale"] == 1
    assert handle(model, old, c, max_lag_s=0.0, now=101.0) is not None


def test_worker_never_imports_tensorflow(tiny_model_dir):
    code = ("import sys, numpy as np; import services.classify.__main__, services.classify.worker; "
            "from shared.model import FacialExpressionModel as M; "
            f"M({str(tiny_model_dir)!r}).predict_proba(np.zeros((2,48,48),np.uint8)); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


class SlowModel:
    """The real model, then a pause: classify as the slow stage."""

    def __init__(self, model, pause_s: float):
        self.model, self.pause_s = model, pause_s

    def predict_proba(self, faces):
        import time
        out = self.model.predict_proba(faces)
        time.sleep(self.pause_s)
        return out


def test_a_busy_worker_classifies_the_newest_job_and_skips_the_rest(model, sample_data):
    """A worker holds one credit: results that came while it was busy are not queued behind it, the newest
    replaces them (counted ``superseded`` by detect's dispatcher) and is classified next; a job older than
    the budget is answered with a Skip (counted stale), never classified late."""
    import itertools
    import threading
    import time

    import zmq

    from services.classify.worker import run
    from services.web.testing import pipeline_config
    from shared import bus
    from shared.messages import Predictions, Skip

    cfg = pipeline_config(max_lag_ms=400.0)
    ctx = zmq.Context()
    numbers = itertools.count()

    def release(f):  # numbered as it leaves, as detect does
        f.job, f.run = next(numbers), 77
        return encode(f)
    disp, sink = bus.faces_dispatcher(cfg, ctx, prepare=release), bus.predictions_sink(cfg, ctx)
    stop = threading.Event()
    worker = threading.Thread(target=run, args=(cfg, SlowModel(model, 0.3), ctx, stop.is_set), daemon=True)
    worker.start()
    try:
        assert disp.wait_for_workers(5)
        disp.offer("cam", faces_msg(sample_data, 1, time.time()))  # keeps the worker busy for 0.3 s
        time.sleep(0.1)
        older, newest = faces_msg(sample_data, 1, time.time()), faces_msg(sample_data, 2, time.time() + 1e-3)
        disp.offer("cam", older)
        disp.offer("cam", newest)
        got: list = []
        deadline = time.time() + 5
        while time.time() < deadline and len(got) < 2:
            if sink.poll(200):
                got.append(decode(sink.recv()))
        assert [(type(m).__name__, m.faces.job) for m in got] == [("Predictions", 0), ("Predictions", 1)]
        assert got[1].frame.t_capture == newest.frame.t_capture and len(got[1].faces) == 2  # the newest
        assert disp.counters["superseded"] == 1
        for m in got:
            stage, t_recv, _ = m.frame.stamps[-1]
            assert stage == "classify" and t_recv - m.frame.t_capture <= 0.4
        disp.offer("cam", faces_msg(sample_data, 1, time.time() - 10))   # captured 10 s ago: over budget
        msg = decode(sink.recv()) if sink.poll(3000) else None
        assert isinstance(msg, Skip) and msg.job == 2 and msg.reason == "stale"
    finally:
        stop.set()
        worker.join(5)
        disp.close()
        ctx.destroy(linger=0)


def test_startup_reports_its_speed_on_this_cpu_and_warns_when_slow(model, caplog):
    """classify measures the model on this CPU at start-up and logs it with the vector extensions; a model
    slower than the threshold gets a warning that names the fast network."""
    import logging

    from shared.model import FAST_MODEL_DIR, report_speed, vector_extensions

    with caplog.at_level(logging.INFO, logger="shared.model"):
        ms = report_speed(model)
    assert ms > 0
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any("ms per face on this CPU" in m and ("/".join(vector_extensions()) or "no avx2") in m for m in info)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shared.model"):
        report_speed(model, slow_ms=0.0)  # any real time is above 0 ms: the warning must come
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and FAST_MODEL_DIR in warnings[0]
    # the model it names is in the repository, exported, with its card
    assert (Path(__file__).resolve().parents[1] / FAST_MODEL_DIR / "card.json").is_file()
