"""Every route of the web app with the Flask test client: pages, /api/model, /api/predict and bad input."""
from __future__ import annotations

import io
import re

import cv2
import numpy as np
import pytest

from services.web import create_app, close_app
from shared.analyzer import FaceAnalyzer
from services.web.testing import detectable_faces, encode_jpeg, pipeline_config, place_faces
from shared.labels import EMOTIONS


@pytest.fixture(scope="module")
def analyzer(tiny_model_dir, detector):
    from shared.model import FacialExpressionModel
    return FaceAnalyzer(detector, FacialExpressionModel(tiny_model_dir))


@pytest.fixture(scope="module")
def faces(sample_data, detector):
    return detectable_faces(sample_data.faces, detector, count=2)


@pytest.fixture
def app(request, tiny_model_dir):
    extra = getattr(request, "param", {})
    analyzer = request.getfixturevalue("analyzer") if extra.pop("real_analyzer", True) else None
    app = create_app({"FERLIVE": pipeline_config(), "TESTING": True, "MODEL_DIR": str(tiny_model_dir),
                      "ANALYZER": analyzer, **extra})
    yield app
    close_app(app)


@pytest.fixture
def client(app):
    return app.test_client()


# ------------------------------------------------------------------------------- pages
@pytest.mark.parametrize("path", ["/", "/webcam", "/upload", "/video"])
def test_pages_render_with_a_strict_csp_and_no_inline_script(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'self'" in csp
    html = r.get_data(as_text=True)
    for tag in re.findall(r"<script[^>]*>", html):
        assert 'src="/static/' in tag, f"inline script on {path}: {tag}"
    assert not re.search(r"<script[^>]*>\s*[^<\s]", html), "script element with a body"
    assert " on" + "click=" not in html and "style=" not in html
    assert r.headers["X-Content-Type-Options"] == "nosniff"


def test_static_files_are_served(client):
    for name in ("app.css", "draw.js", "live.js", "webcam.js", "upload.js", "video.js"):
        assert client.get(f"/static/{name}").status_code == 200


def test_unknown_api_route_is_json_404(client):
    r = client.get("/api/nope")
    assert r.status_code == 404 and r.is_json and "error" in r.get_json()


def test_latest_and_health_without_a_pipeline(client):
    d = client.get("/api/latest").get_json()
    assert d["faces"] == [] and d["seq"] is None
    h = client.get("/api/health").get_json()
    assert h["ok"] is False
    assert set(h["stages"]) >= {"capture", "detect", "classify", "annotate"}
    assert not any(s["alive"] for s in h["stages"].values())


# ------------------------------------------------------------------------------- /api/model
def test_model_reports_labels_accuracy_and_version_from_the_card(client, tiny_model_dir):
    d = client.get("/api/model").get_json()
    assert d["labels"] == list(EMOTIONS)
    assert d["version"] and d["name"]
    assert 0.0 <= d["accuracy"] <= 1.0
    assert set(d["accuracies"]) == {"PublicTest", "PrivateTest"}
    assert 0.0 <= d["accuracies"]["PrivateTest"]["int8"] <= 1.0


# ------------------------------------------------------------------------------- /api/predict
def check_faces(d, boxes_xywh, scale=1.0):
    assert len(d["faces"]) == len(boxes_xywh)
    got = sorted(d["faces"], key=lambda f: f["box"][0])
    for face, (x, y, w, h) in zip(got, sorted(boxes_xywh.tolist())):
        bx, by, bw, bh = face["box"]
        cx, cy = bx + bw / 2, by + bh / 2
        assert abs(cx - (x + w / 2) * scale) < 0.35 * w * scale and abs(cy - (y + h / 2) * scale) < 0.35 * h * scale
        assert list(face["scores"]) == list(EMOTIONS)
        assert sum(face["scores"].values()) == pytest.approx(1.0, abs=0.02)
        assert face["emotion"] == max(face["scores"], key=face["scores"].get)


def test_predict_raw_jpeg_body(client, faces):
    frame, boxes = place_faces(faces, [(40, 120), (380, 150)])
    r = client.post("/api/predict", data=encode_jpeg(frame), content_type="image/jpeg")
    assert r.status_code == 200, r.get_json()
    d = r.get_json()
    check_faces(d, boxes)
    assert d["width"] == 640 and d["height"] == 480
    assert d["timing_ms"] > 0 and set(d["steps_ms"]) == {"decode", "detect", "classify"}


def test_predict_multipart_png(client, faces):
    frame, boxes = place_faces(faces[:1], [(200, 100)])
    ok, png = cv2.imencode(".png", frame)
    r = client.post("/api/predict", data={"image": (io.BytesIO(png.tobytes()), "face.png")},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    check_faces(r.get_json(), boxes)


def test_predict_agrees_with_the_pipeline_pieces(client, faces, detector, analyzer):
    frame, _ = place_faces(faces[:1], [(200, 100)])
    jpeg = encode_jpeg(frame)
    d = client.post("/api/predict", data=jpeg).get_json()
    det = detector.detect(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
    probs = analyzer.model.predict_proba(det.crops)
    assert [f["box"] for f in d["faces"]] == det.boxes_xywh.tolist()
    np.testing.assert_allclose([list(f["scores"].values()) for f in d["faces"]], probs, atol=1e-4)


def test_huge_image_is_downscaled_and_boxes_come_back_in_its_pixels(client, faces):
    frame, boxes = place_faces(faces[:1], [(200, 100)])
    big = cv2.resize(frame, (4000, 3000), interpolation=cv2.INTER_NEAREST)  # 12 MP: the pixel cap
    r = client.post("/api/predict", data=encode_jpeg(big, 60))
    assert r.status_code == 200, r.get_json()
    d = r.get_json()
    assert (d["width"], d["height"]) == (4000, 3000)
    check_faces(d, boxes, scale=6.25)


def test_no_face_is_an_empty_list(client):
    r = client.post("/api/predict", data=encode_jpeg(np.full((480, 640, 3), 90, np.uint8)))
    assert r.status_code == 200 and r.get_json()["faces"] == []


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("body, needle", [
    (b"", "empty body"),
    (b"hello, I am text", "not an image"),
    (b"GIF89a" + b"\0" * 64, "not an image"),
])
def test_predict_rejects_non_images(client, body, needle):
    r = client.post("/api/predict", data=body)
    assert r.status_code == 400 and r.is_json
    assert needle in r.get_json()["error"]


def test_predict_rejects_truncated_and_corrupt_images(client, faces):
    frame, _ = place_faces(faces[:1], [(200, 100)])
    jpeg = encode_jpeg(frame)
    r = client.post("/api/predict", data=jpeg[: len(jpeg) // 2])
    assert r.status_code == 400 and "truncated JPEG" in r.get_json()["error"]
    ok, png = cv2.imencode(".png", frame)
    r = client.post("/api/predict", data=png.tobytes()[:1000])
    assert r.status_code == 400 and "truncated PNG" in r.get_json()["error"]
    r = client.post("/api/predict", data=b"\xff\xd8\xff\xe0" + b"\x00" * 200 + b"\xff\xd9")
    assert r.status_code == 400 and "corrupt JPEG" in r.get_json()["error"]


def test_predict_multipart_without_a_file(client):
    r = client.post("/api/predict", data={"note": "no file"}, content_type="multipart/form-data")
    assert r.status_code == 400 and "no file" in r.get_json()["error"]


def test_predict_over_the_size_limit_is_json_413(client):
    r = client.post("/api/predict", data=b"\xff\xd8\xff" + b"\0" * (10 * 1024 * 1024 + 10))
    assert r.status_code == 413 and r.is_json and "too large" in r.get_json()["error"]


@pytest.mark.parametrize("app", [{"MAX_CONTENT_LENGTH": 50_000, "real_analyzer": False}], indirect=True)
def test_size_limit_is_configurable(client):
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    r = client.post("/api/predict", data=encode_jpeg(noise, 95))
    assert r.status_code == 413
    r = client.post("/api/predict", data={"image": (io.BytesIO(encode_jpeg(noise, 95)), "x.jpg")},
                    content_type="multipart/form-data")
    assert r.status_code == 413 and r.is_json


def test_get_on_predict_is_405_json(client):
    r = client.get("/api/predict")
    assert r.status_code == 405 and r.is_json


def test_predict_without_a_model_is_503_json(tmp_path, faces):
    app = create_app({"FERLIVE": pipeline_config(), "TESTING": True, "MODEL_DIR": str(tmp_path / "missing")})
    try:
        frame, _ = place_faces(faces[:1], [(200, 100)])
        r = app.test_client().post("/api/predict", data=encode_jpeg(frame))
        assert r.status_code == 503 and "model not available" in r.get_json()["error"]
    finally:
        close_app(app)
