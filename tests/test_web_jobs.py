"""Video jobs over the API: upload, queue position, progress, the outputs, and refusals (not a video, too big,
empty, unknown job or file)."""
from __future__ import annotations

import csv
import io
import time

import numpy as np
import pytest

from services.web import close_app, create_app
from services.web.testing import pipeline_config
from shared.synthetic import place_faces, write_video


@pytest.fixture(scope="module")
def clip(sample_data, tmp_path_factory):
    rng = np.random.default_rng(0)
    frames = [place_faces(sample_data.faces[k:k + 1], rng=rng, background="plain", face_px=(150, 180))[0]
              for k in range(4) for _ in range(15)]
    return write_video(frames, tmp_path_factory.mktemp("jobs") / "clip.mp4", fps=15).read_bytes()


@pytest.fixture
def app(tiny_model_dir, tmp_path):
    app = create_app({"FERLIVE": pipeline_config(), "TESTING": True, "MODEL_DIR": str(tiny_model_dir),
                      "HUB": False, "JOBS_DIR": str(tmp_path / "jobs"), "MAX_VIDEO_BYTES": 2_000_000, "JOBS_KEPT": 2})
    yield app
    close_app(app)


def _wait(client, url, status=("done", "failed"), timeout=60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = client.get(url).get_json()
        if d["status"] in status:
            return d
        time.sleep(0.05)
    raise AssertionError(f"job still {d['status']} after {timeout} s")


def test_a_video_job_runs_and_serves_its_outputs(app, clip):
    client = app.test_client()
    r = client.post("/api/jobs", data={"video": (io.BytesIO(clip), "clip.mp4")}, content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert job["status"] in ("queued", "running") and job["url"] == f"/api/jobs/{job['id']}"
    done = _wait(client, job["url"])
    assert done["status"] == "done", done
    assert done["progress"]["frames_done"] == done["summary"]["frames_read"] == 60
    files = done["files"]
    assert {"annotated.webm", "faces.csv", "summary.json", "overview.png"} <= set(files)
    video = client.get(files["annotated.webm"])
    assert video.status_code == 200 and video.data[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM/Matroska file
    rows = list(csv.DictReader(io.StringIO(client.get(files["faces.csv"]).get_data(as_text=True))))
    assert len(rows) == done["summary"]["face_rows"]
    assert client.get(files["summary.json"]).get_json()["frames_read"] == 60
    assert client.get(f"/api/jobs/{job['id']}/files/upload.video").status_code == 404
    assert client.get(f"/api/jobs/{job['id']}/files/..%2Fupload.video").status_code == 404


def test_raw_body_upload_and_queue_positions(app, clip):
    client = app.test_client()
    ids = []
    for k in range(3):
        r = client.post(f"/api/jobs?name=v{k}.mp4", data=clip, content_type="video/mp4")
        assert r.status_code == 202
        ids.append(r.get_json())
    assert ids[2]["status"] == "queued" and ids[2]["position"] in (1, 2)
    positions = [client.get(j["url"]).get_json().get("position") for j in ids]
    assert positions[0] is None or positions[0] == 1
    for j in ids:
        assert _wait(client, j["url"])["status"] == "done"
    # only JOBS_KEPT=2 finished jobs are kept: the oldest is gone with its files
    assert client.get(ids[0]["url"]).status_code == 404


@pytest.mark.parametrize("body,ctype,code,words", [
    (b"", "video/mp4", 400, "empty"),
    (b"GIF89a not a video at all" * 40, "video/mp4", 400, "not a video"),
    (b"\0" * 2_100_000, "video/mp4", 413, "at most 2000000 bytes (MAX_VIDEO_BYTES)"),
])
def test_refusals_are_clear(app, body, ctype, code, words):
    r = app.test_client().post("/api/jobs", data=body, content_type=ctype)
    assert r.status_code == code
    assert words in r.get_json()["error"]


def test_multipart_without_a_video_field_and_unknown_jobs(app):
    client = app.test_client()
    r = client.post("/api/jobs", data={"image": (io.BytesIO(b"x"), "a.jpg")}, content_type="multipart/form-data")
    assert r.status_code == 400 and "`video`" in r.get_json()["error"]
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.get("/video").status_code == 200


def test_uploads_from_another_origin_and_oversized_frames_are_refused(tiny_model_dir, tmp_path, clip):
    """The job upload is a boundary like /api/predict: same-origin only, and the frame size is checked against
    the pixel cap from the container's header before any frame is decoded."""
    app = create_app({"FERLIVE": pipeline_config(width=320, height=240, max_image_pixels=100_000), "TESTING": True,
                      "MODEL_DIR": str(tiny_model_dir), "HUB": False, "JOBS_DIR": str(tmp_path / "jobs")})
    try:
        client = app.test_client()
        r = client.post("/api/jobs", data=clip, content_type="video/mp4", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403 and "origin" in r.get_json()["error"]
        r = client.post("/api/jobs", data=clip, content_type="video/mp4")  # 640x480 = 307,200 pixels
        assert r.status_code == 400 and "640x480" in r.get_json()["error"] and "100000" in r.get_json()["error"]
        assert not any((tmp_path / "jobs").iterdir())  # nothing of a refused upload is kept
    finally:
        close_app(app)
