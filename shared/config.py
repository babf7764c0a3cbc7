"""The one pipeline configuration: a dataclass read from FERLIVE_* environment variables, then CLI flags.

Every field ``name`` is read from the env var ``FERLIVE_<NAME>`` (upper case) and from the flag
``--<name-with-dashes>``; flags win over env vars, env vars over defaults. Booleans accept
1/0/true/false/yes/no/on/off (flags: ``--loop`` / ``--no-loop``). ``python -m services.<stage> --help``
lists every field with its help text and default.

    cfg = Config.from_env_and_args(argv)      # in a stage's __main__
    cfg = Config(frames_endpoint=...)        # in tests
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

ENV_PREFIX = "FERLIVE_"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the text names the variable or flag."""


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    """Endpoints, queue sizes, rates and per-stage settings for every ferlive service."""

    # --- endpoints (who binds is fixed: see shared/bus.py) -------------------------------------
    frames_endpoint: str = _f("tcp://127.0.0.1:5551", "capture's frames dispatcher (ROUTER) binds, detect workers "
                                                      "connect and ask for frames")
    detections_endpoint: str = _f("tcp://127.0.0.1:5557", "annotate PULL binds, detect workers PUSH connect: "
                                                          "faces found, for annotate to hand to classify")
    faces_endpoint: str = _f("tcp://127.0.0.1:5552", "annotate's faces dispatcher (ROUTER) binds, classify workers "
                                                     "connect and ask for faces")
    predictions_endpoint: str = _f("tcp://127.0.0.1:5553",
                                   "annotate PULL binds, classify PUSH connects: predictions")
    annotated_endpoint: str = _f("tcp://127.0.0.1:5554", "annotate PUB binds, web SUB connects: annotated")
    web_frames_endpoint: str = _f("tcp://127.0.0.1:5556", "the web's browser-frames dispatcher (ROUTER) binds, "
                                                          "detect workers connect too ('' = off)")
    heartbeat_endpoint: str = _f("tcp://127.0.0.1:5555",
                                 "web SUB binds, every stage's PUB connects: heartbeat messages")
    # --- queues -------------------------------------------------------------------------------
    pub_hwm: int = _f(2, "high-water mark (messages) of PUB/SUB sockets; live data beyond it is dropped")
    push_hwm: int = _f(2, "high-water mark (messages) of PUSH/PULL sockets, per peer")
    sock_buf: int = _f(65536, "kernel send/receive buffer (bytes) of data sockets; small keeps latency flat")
    max_lag_ms: float = _f(250.0, "latency budget: classify drops (and counts, 'stale') frames captured longer "
                                  "ago than this instead of classifying them late")
    heartbeat_interval: float = _f(1.0, "seconds between heartbeats")
    max_msg_bytes: int = _f(4 * 1024 * 1024, "largest ZeroMQ message any stage accepts (ZMQ_MAXMSGSIZE); "
                                             "a peer sending more is disconnected")
    # --- untrusted input ----------------------------------------------------------------------
    max_image_pixels: int = _f(12_000_000, "images whose header declares more pixels are refused before "
                                           "decoding (detect, /api/predict, /ws/frames)")
    min_image_side: int = _f(16, "images with a side under this many pixels are refused")
    log_every_s: float = _f(10.0, "a kind of bad input is logged at most once per this many seconds")
    # --- ZeroMQ CURVE (optional: stages on several hosts) ---------------------------------------
    curve_dir: str = _f("", "folder with the keys from `python -m shared.keys DIR` (server.key_secret, "
                            "client.key_secret and the public *.key): every socket encrypts and "
                            "authenticates ('' = plain TCP)")
    # --- capture ------------------------------------------------------------------------------
    source: str = _f("demo", "camera index (0), video file, stream URL (rtsp://, http://) or 'demo'; several, "
                             "comma-separated, are read side by side ('demo,clip.mp4,0')")
    source_id: str = _f("", "name of the source in messages, one per source, comma-separated (default: the "
                            "source itself; a repeated one gets #2, #3, ...)")
    loop: bool = _f(False, "restart a video file at its end (demo always loops)")
    fps: float = _f(30.0, "capture rate limit, frames per second (0: as fast as the source gives)")
    width: int = _f(640, "frame width sent downstream (frames are resized to it)")
    height: int = _f(480, "frame height sent downstream")
    jpeg_quality: int = _f(80, "JPEG quality of frames and annotated frames (1-100)")
    max_frames: int = _f(0, "capture stops after this many frames (0: no limit)")
    wait_subscriber_s: float = _f(0.0, "capture waits up to this long for detect workers before sending (0: no wait)")
    wait_subscribers: int = _f(1, "how many detect workers capture waits for")
    detect_affinity: str = _f("any", "how capture hands sources to detect workers: 'any' (the newest frame of a "
                                     "source goes to whichever worker is free) or 'pinned' (a source stays on one "
                                     "worker while it lives)")
    retry_max_s: float = _f(5.0, "longest wait between attempts to reopen a lost camera/stream")
    # --- detect / classify --------------------------------------------------------------------
    model_dir: str = _f("", "exported model folder for classify ('' = the bundled default model)")
    face_margin: float = _f(0.0, "crop margin per side as a fraction of the box (0: the detector's measured framing)")
    detector_kind: str = _f("yunet", "face detector: 'yunet' (OpenCV Zoo's YuNet, five landmarks), 'haar' "
                                     "(OpenCV cascade) or 'blazeface' (TFLite)")
    detector_register: str = _f("off", "face crops: 'off' (the FER2013-framed box), 'level' (turned so the eyes "
                                       "are level) or 'similarity' (mapped onto FER2013's landmark template)")
    detector_redetect_every: int = _f(1, "full-frame detection every N frames per source; between, only near "
                                         "the last boxes (faster)")
    # --- annotate -----------------------------------------------------------------------------
    reorder_window: int = _f(8, "results held to put frames back in order; beyond it a missing one is skipped")
    reorder_timeout_ms: float = _f(100.0, "longest a frame waits for an earlier, missing one")
    ema_alpha: float = _f(0.5, "weight of the newest probabilities in a track's average (1 = no smoothing)")
    iou_threshold: float = _f(0.3, "least box IoU that continues a face track from the last frame")
    track_max_age: int = _f(15, "frames a track survives without its face")
    draw: bool = _f(True, "draw boxes/labels onto the annotated JPEG (off: pass the frame through)")
    # --- misc ---------------------------------------------------------------------------------
    log_level: str = _f("INFO", "logging level of the services")
    access_log: bool = _f(False, "web: log every HTTP request, one line each (off: only warnings and errors)")

    def __post_init__(self) -> None:
        if self.pub_hwm < 1 or self.push_hwm < 1:
            raise ConfigError("pub_hwm and push_hwm must be >= 1 (0 would mean unbounded queues)")
        if not 0.0 < self.ema_alpha <= 1.0:
            raise ConfigError(f"ema_alpha={self.ema_alpha}: must be in (0, 1]")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ConfigError(f"iou_threshold={self.iou_threshold}: must be in [0, 1]")
        if self.width < 16 or self.height < 16:
            raise ConfigError(f"frame size {self.width}x{self.height}: both must be >= 16")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality={self.jpeg_quality}: must be 1-100")
        if self.reorder_window < 1:
            raise ConfigError("reorder_window must be >= 1")
        if self.fps < 0:
            raise ConfigError("fps must be >= 0")
        if self.detect_affinity not in ("any", "pinned"):
            raise ConfigError(f"detect_affinity must be 'any' or 'pinned', not {self.detect_affinity!r}")
        if self.max_msg_bytes < 65536:
            raise ConfigError(f"max_msg_bytes={self.max_msg_bytes}: at least 65536 (a frame must fit)")
        if self.min_image_side < 8 or self.max_image_pixels < max(self.width * self.height, self.min_image_side ** 2):
            raise ConfigError(f"max_image_pixels={self.max_image_pixels} / min_image_side={self.min_image_side}: "
                              "need min_image_side >= 8 and max_image_pixels >= width*height")

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Defaults, replaced by FERLIVE_* variables of ``env`` (default os.environ), then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.name.upper()
            if var in env:
                values[f.name] = _parse(f, env[var], var)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add one ``--flag`` per field (default: not given, so env vars and defaults still apply)."""
        group = parser.add_argument_group("ferlive config (flag > FERLIVE_* env var > default)")
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            help_ = f"{f.metadata.get('help', '')} [env {ENV_PREFIX}{f.name.upper()}, default {f.default!r}]"
            if f.type in ("bool", bool):
                group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_)
            else:
                group.add_argument(flag, dest=f.name, type=str, default=argparse.SUPPRESS,
                                   metavar=f.name.upper(), help=help_)

    @classmethod
    def from_env_and_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None,
                          prog: str | None = None, description: str | None = None) -> "Config":
        """The services' entry: parse ``argv`` (default sys.argv[1:]) over env vars over defaults."""
        parser = argparse.ArgumentParser(prog=prog, description=description)
        cls.add_arguments(parser)
        ns = vars(parser.parse_args(argv))
        by_name = {f.name: f for f in fields(cls)}
        try:
            overrides = {k: (v if isinstance(v, bool) else _parse(by_name[k], v, "--" + k.replace("_", "-")))
                         for k, v in ns.items()}
            return cls.from_env(env, **overrides)
        except ConfigError as exc:
            parser.error(str(exc))
            raise  # unreachable

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)


def _parse(f: dataclasses.Field, raw: str, where: str) -> Any:
    typ = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if typ == "bool":
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{where}={raw!r}: expected {typ}") from None
