"""The exported model, loaded once: `FacialExpressionModel(path).predict_proba(faces)`.

A model directory (written by `ferlive export`) holds exactly:

    card.json             labels, input spec, quantisation parameters, metrics, training record
    model.json            Keras `to_json()` of the network
    model.weights.h5      its weights
    model_float32.tflite  float32 TFLite
    model_int8.tflite     full-integer TFLite (int8 input and output)

The TFLite backend runs on `ai_edge_litert` and never imports TensorFlow, so services can use it;
the Keras backend imports Keras lazily.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from shared.labels import EMOTIONS, NUM_CLASSES
from shared.preprocess import prepare_faces, to_model_input

log = logging.getLogger(__name__)

CARD = "card.json"
MODEL_JSON = "model.json"
WEIGHTS = "model.weights.h5"
TFLITE_FILES: dict[str, str] = {"float32": "model_float32.tflite", "int8": "model_int8.tflite"}
MODEL_FILES: tuple[str, ...] = (CARD, MODEL_JSON, WEIGHTS, *TFLITE_FILES.values())
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "bundled_model"
BACKENDS = ("tflite", "keras")
KERAS_BATCH = 256
# SIMD extensions that decide the runtime's kernels: the same int8 network is 5-6x faster with VNNI.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
SLOW_MS_PER_FACE = 2.0  # above this, four faces take a quarter of a 30 frames/s frame budget
FAST_MODEL_DIR = "models/vgg_small_mid96_distilled"  # the one-network option the slow-CPU warning names


def cpu_flags() -> set[str]:
    """All of this CPU's flags from /proc/cpuinfo (empty where unreadable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def vector_extensions() -> list[str]:
    """This CPU's SIMD extensions among VECTOR_FLAGS (from /proc/cpuinfo's flags; [] where unreadable)."""
    flags = cpu_flags()
    return [f for f in VECTOR_FLAGS if f in flags]


def measure_ms_per_face(model: "FacialExpressionModel", calls: int = 20, warmup: int = 3) -> float:
    """Median wall time of one single-face call, in ms, on this CPU (a gray face of the model's size)."""
    face = np.full((1, model.input_size, model.input_size), 128, np.uint8)
    for _ in range(warmup):
        model.predict_proba(face)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model.predict_proba(face)
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


def report_speed(model: "FacialExpressionModel", slow_ms: float = SLOW_MS_PER_FACE) -> float:
    """Measure the model on this CPU and log it with the CPU's vector extensions; warn when it is slow here
    (e.g. the ensemble on a CPU without VNNI) and name the fast single network. Returns ms per face."""
    ms = measure_ms_per_face(model)
    ext = vector_extensions()
    name = model.card.get("name", model.model_dir.name)
    log.info("model %s (%s): %.2f ms per face on this CPU (%s)", name, model.form, ms, "/".join(ext) or "no avx2")
    if ms > slow_ms:
        hint = "" if "avx512_vnni" in ext or "avx_vnni" in ext else " (this CPU has no VNNI, which int8 needs most)"
        log.warning("model %s takes %.1f ms per face here%s: with several faces per frame classify may fall "
                    "behind; FERLIVE_MODEL_DIR=%s is one network about 17x cheaper "
                    "(README: The fast model)", name, ms, hint, FAST_MODEL_DIR)
    return ms


def read_card(model_dir: str | Path) -> dict:
    """card.json of a model directory; FileNotFoundError names the missing directory or file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist; export one with "
                                f"`ferlive export --run-dir RUN --out {model_dir}`")
    card_path = model_dir / CARD
    if not card_path.is_file():
        raise FileNotFoundError(f"{card_path} is missing; {model_dir} is not an exported model directory")
    card = json.loads(card_path.read_text())
    labels = tuple(card.get("labels", ()))
    if labels != EMOTIONS:
        raise ValueError(f"{card_path}: labels {list(labels)} differ from shared.EMOTIONS {list(EMOTIONS)}")
    return card


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence C-level stderr for the block: TFLite prints "INFO: Created TensorFlow Lite XNNPACK delegate
    for CPU." on every first allocation, on every command. Python-level errors still raise."""
    try:
        fd = os.dup(2)
    except OSError:  # no stderr to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(fd, 2)
        os.close(fd)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype=np.int8) -> np.ndarray:
    """float -> integer tensor with TFLite's affine rule q = round(x / scale) + zero_point."""
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - zero_point) * scale).astype(np.float32)


def keras_files(model_dir: str | Path) -> tuple[Path, Path]:
    """(model.json, model.weights.h5) of a model directory; FileNotFoundError names a missing one."""
    model_dir = Path(model_dir)
    paths = (model_dir / MODEL_JSON, model_dir / WEIGHTS)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the model directory {model_dir}")
    return paths


def load_keras_network(model_dir: str | Path):
    """The Keras network of a model directory (model.json + model.weights.h5), returning one tensor even where
    its model.json names its one output in a list; FileNotFoundError names a missing file. Keras is imported
    here only: the TFLite forms never need it."""
    import keras

    arch, weights = keras_files(model_dir)
    network = keras.models.model_from_json(arch.read_text())
    network.load_weights(str(weights))
    if isinstance(network.output, (list, tuple)) and len(network.outputs) == 1:
        network = keras.Model(network.inputs, network.outputs[0], name=network.name)
    return network


class FacialExpressionModel:
    """An exported expression model. `backend="tflite"` runs `model_<precision>.tflite` with
    ai-edge-litert (`precision` "int8", the default, or "float32"); `backend="keras"` loads
    model.json + model.weights.h5 with Keras.

    Thread-safety: each instance owns one interpreter (or Keras model) and serialises its calls with a
    lock, so sharing one instance between threads is safe but not parallel; for parallel inference give
    each worker its own instance."""

    def __init__(self, path: str | Path | None = None, backend: str = "tflite", num_threads: int = 1,
                 precision: str = "int8") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")
        if backend == "tflite" and precision not in TFLITE_FILES:
            raise ValueError(f"unknown precision {precision!r}; use one of {tuple(TFLITE_FILES)}")
        self.model_dir = Path(path) if path is not None else DEFAULT_MODEL_DIR
        self.card = read_card(self.model_dir)
        self.labels: tuple[str, ...] = tuple(self.card["labels"])
        shape = tuple(self.card["input"]["shape"])
        if len(shape) != 3 or shape[0] != shape[1] or shape[2] != 1:
            raise ValueError(f"{self.model_dir / CARD}: input shape {shape} is not (S,S,1) gray")
        self.input_size: int = shape[0]
        self.backend = backend
        self.form = precision if backend == "tflite" else "keras"
        self._lock = threading.Lock()
        self._batch = -1
        if backend == "tflite":
            self._load_tflite(num_threads)
        else:
            self._load_keras()

    def _require(self, name: str) -> Path:
        path = self.model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from the model directory {self.model_dir}")
        return path

    def _load_tflite(self, num_threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        path = self._require(TFLITE_FILES[self.form])
        self._interp = Interpreter(model_path=str(path), num_threads=num_threads)
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self._in_q = self._out_q = None
        if self.form == "int8":
            quant = self.card["quantization"]["int8"]
            self._in_q = (float(quant["input"]["scale"]), int(quant["input"]["zero_point"]))
            self._out_q = (float(quant["output"]["scale"]), int(quant["output"]["zero_point"]))
            for role, details, (scale, zp) in (("input", self._in, self._in_q), ("output", self._out, self._out_q)):
                got_scale, got_zp = details["quantization"]
                if details["dtype"] != np.int8 or not np.isclose(got_scale, scale, rtol=1e-6) or got_zp != zp:
                    raise ValueError(f"{path}: {role} quantisation {details['dtype'].__name__} "
                                     f"({got_scale}, {got_zp}) does not match card.json ({scale}, {zp})")

    def _load_keras(self) -> None:
        import keras

        self._keras = load_keras_network(self.model_dir)
        self._to_numpy = keras.ops.convert_to_numpy

    def predict_proba(self, faces: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Face crops (uint8 gray (N,H,W), BGR (N,H,W,3), one (H,W) face, or a list of any sizes) ->
        float32 (N,7) probabilities in shared.EMOTIONS order, each row summing to 1."""
        if isinstance(faces, (list, tuple)) and len(faces) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        faces_gray = prepare_faces(faces, self.input_size)
        if len(faces_gray) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        x = to_model_input(faces_gray)
        with self._lock:
            probs = self._run_tflite(x) if self.backend == "tflite" else self._run_keras(x)
        if probs.shape != (len(x), NUM_CLASSES):
            raise ValueError(f"model output {probs.shape}, expected ({len(x)}, {NUM_CLASSES})")
        # int8 softmax outputs are multiples of 1/256; renormalise so each row is a distribution.
        return (probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def predict_emotion(self, face: np.ndarray) -> str:
        """One face crop -> its most probable label."""
        face = np.asarray(face)
        if face.ndim not in (2, 3):
            raise ValueError(f"predict_emotion takes one face (H,W) or (H,W,3), got shape {face.shape}")
        return self.labels[int(np.argmax(self.predict_proba([face])[0]))]

    def _run_tflite(self, x: np.ndarray) -> np.ndarray:
        if self._batch != len(x):  # one interpreter call for the whole batch
            self._interp.resize_tensor_input(self._in["index"], [len(x), *x.shape[1:]])
            if self._batch < 0:
                with quiet_native_stderr():  # the delegate's INFO line on the first allocation
                    self._interp.allocate_tensors()
            else:
                self._interp.allocate_tensors()
            self._batch = len(x)
        if self._in_q is not None:
            x = quantize(x, *self._in_q)
        self._interp.set_tensor(self._in["index"], x)
        self._interp.invoke()
        out = self._interp.get_tensor(self._out["index"])
        return dequantize(out, *self._out_q) if self._out_q is not None else out.astype(np.float32)

    def _run_keras(self, x: np.ndarray) -> np.ndarray:
        parts = [self._to_numpy(self._keras(x[i:i + KERAS_BATCH], training=False))
                 for i in range(0, len(x), KERAS_BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def __repr__(self) -> str:
        return f"FacialExpressionModel({str(self.model_dir)!r}, form={self.form!r})"
