"""shared.analyzer: one analysis path. The CLI, the API and the detect stage (+ classify) give identical boxes
and labels for the same images; results are typed, and "no face" is an ordinary empty result."""
from __future__ import annotations

import json
import time

import cv2
import numpy as np
import pytest

from shared.analyzer import CROP_MAX_SIDE, FaceAnalysis, FaceAnalyzer
from shared.labels import EMOTIONS


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from shared.model import FacialExpressionModel
    return FacialExpressionModel(tiny_model_dir)


@pytest.fixture(scope="module")
def analyzer(model):
    return FaceAnalyzer(model=model)


@pytest.fixture(scope="module")
def images(sample_data, detector, tmp_path_factory):
    """JPEG files: two FER2013 faces in a frame, a turned person with context on a textured background,
    a 48x48 face crop, and a frame without a face."""
    from services.web.testing import detectable_faces, encode_jpeg, place_faces
    from shared.synthetic import make_background, person_scene
    d = tmp_path_factory.mktemp("images")
    two, _ = place_faces(detectable_faces(sample_data.faces, detector, count=2), [(40, 120), (380, 150)])
    person, _ = person_scene(people=2, face_px=(90, 150), angle_deg=(-20, 20), rng=np.random.default_rng(4))
    blank = make_background((300, 200), "textured", np.random.default_rng(5))
    out = {}
    for name, img in (("two", two), ("person", person), ("crop", sample_data.faces[3]), ("blank", blank)):
        path = d / f"{name}.jpg"
        path.write_bytes(encode_jpeg(img, 90))
        out[name] = path
    return out


def test_cli_api_and_detect_stage_agree(images, tiny_model_dir, model, capsys):
    from services.classify.worker import classify
    from services.detect.__main__ import build_analyzer
    from services.detect.stage import DetectStage
    from services.web import close_app, create_app
    from services.web.testing import pipeline_config
    from shared.config import Config
    from shared.messages import Frame, encode
    from training.cli import main

    paths = [str(p) for p in images.values()]
    assert main(["predict", *paths, "--model-dir", str(tiny_model_dir), "--json"]) == 0
    cli = {d["image"]: d["faces"] for d in map(json.loads, capsys.readouterr().out.splitlines())}

    app = create_app({"FERLIVE": pipeline_config(), "TESTING": True, "MODEL_DIR": str(tiny_model_dir), "HUB": False})
    try:
        client = app.test_client()
        api = {}
        for p in paths:
            r = client.post("/api/predict", data=open(p, "rb").read(), content_type="image/jpeg")
            assert r.status_code == 200, r.get_json()
            api[p] = r.get_json()["faces"]
    finally:
        close_app(app)

    stage = DetectStage(build_analyzer(Config.from_env()))
    for i, p in enumerate(paths):
        assert [f["box"] for f in cli[p]] == [f["box"] for f in api[p]], p
        assert [f["emotion"] for f in cli[p]] == [f["emotion"] for f in api[p]], p
        assert [f["landmarks"] for f in cli[p]] == [f["landmarks"] for f in api[p]], p
        for f in cli[p]:
            assert set(f) == {"box", "emotion", "scores", "landmarks"} and list(f["scores"]) == list(EMOTIONS)
        jpeg = open(p, "rb").read()
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if max(img.shape[:2]) <= CROP_MAX_SIDE:  # a face crop: taken whole by CLI and API alike
            assert [f["box"] for f in cli[p]] == [[0, 0, img.shape[1], img.shape[0]]]
            continue
        faces = stage.handle(encode(Frame("test", i, time.time(), jpeg, img.shape[1], img.shape[0])))
        preds = classify(model, faces)
        assert faces.boxes_xywh.tolist() == [f["box"] for f in cli[p]], p
        assert [EMOTIONS[int(k)] for k in preds.probs.argmax(1)] == [f["emotion"] for f in cli[p]], p
    assert len(cli[str(images["two"])]) == 2 and len(cli[str(images["person"])]) == 2
    assert cli[str(images["blank"])] == []
    assert all(len(f["landmarks"]) == 5 for f in cli[str(images["person"])])  # yunet: five points each


def test_analysis_is_typed_and_no_face_is_empty(analyzer, images):
    frame = cv2.imread(str(images["two"]))
    res = analyzer.analyze(frame)
    assert isinstance(res, FaceAnalysis) and len(res) == 2
    assert res.boxes_xywh.dtype == np.int32 and res.landmarks.shape == (2, 5, 2) and res.probs.shape == (2, 7)
    assert res.emotions == [EMOTIONS[i] for i in res.probs.argmax(1)]
    assert set(res.timing_ms) == {"detect", "classify"}
    np.testing.assert_array_equal(res.boxes_xywh, analyzer.detect(frame).boxes_xywh)
    half = res.to_json(scale=0.5)
    assert half[0]["box"] == [int(round(v * 0.5)) for v in res.boxes_xywh[0]]
    none = analyzer.analyze(cv2.imread(str(images["blank"])))
    assert len(none) == 0 and none.to_json() == [] and none.probs.shape == (0, 7)
    assert len(FaceAnalysis.empty()) == 0
    with pytest.raises(ValueError, match="probs"):
        FaceAnalysis(np.zeros((1, 4), np.int32), np.zeros((1, 5, 2), np.float32), np.zeros((2, 7), np.float32))


def test_skip_detection_takes_the_image_as_one_face(analyzer, images, model):
    frame = cv2.imread(str(images["two"]))
    whole = analyzer.analyze(frame, detect=False)
    assert whole.boxes_xywh.tolist() == [[0, 0, 640, 480]] and np.isnan(whole.landmarks).all()
    from shared.preprocess import prepare_faces
    np.testing.assert_allclose(whole.probs, model.predict_proba(prepare_faces(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))),
                               atol=1e-6)
    crop = cv2.imread(str(images["crop"]))
    assert analyzer.analyze(crop).boxes_xywh.tolist() == [[0, 0, 48, 48]]  # auto: crop-sized -> no detection
    forced = analyzer.analyze(cv2.resize(crop, (200, 200)), detect=True)  # a face filling the image
    assert len(forced) <= 1
    with pytest.raises(ValueError, match="no model"):
        FaceAnalyzer(analyzer.detector).analyze(frame)


def test_api_detect_parameter(images, tiny_model_dir):
    from services.web import close_app, create_app
    from services.web.testing import pipeline_config
    app = create_app({"FERLIVE": pipeline_config(), "TESTING": True, "MODEL_DIR": str(tiny_model_dir), "HUB": False})
    try:
        client = app.test_client()
        data = open(images["two"], "rb").read()
        assert len(client.post("/api/predict?detect=1", data=data).get_json()["faces"]) == 2
        (one,) = client.post("/api/predict?detect=0", data=data).get_json()["faces"]
        assert one["box"] == [0, 0, 640, 480] and one["landmarks"] is None
        r = client.post("/api/predict?detect=maybe", data=data)
        assert r.status_code == 400 and "detect" in r.get_json()["error"]
    finally:
        close_app(app)
