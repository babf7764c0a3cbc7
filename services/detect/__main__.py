"""python -m services.detect: frames in, faces (boxes + landmarks + 48x48 gray crops) out to the classify workers."""
from __future__ import annotations

import sys

from shared import bus
from shared.config import Config
from services.detect.stage import run


def build_analyzer(cfg: Config):
    """The detect stage's analyzer: shared.analyzer.FaceAnalyzer with the Config's detector, no model
    (classification happens in the classify workers)."""
    from shared.analyzer import FaceAnalyzer  # the one analysis path (detection only here)
    from shared.detector import FaceDetector
    return FaceAnalyzer(FaceDetector(cfg))


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env_and_args(argv, prog="python -m services.detect",
                                   description="Find faces in frames and send 48x48 crops to classify.")
    bus.setup_logging(cfg, "detect")
    bus.install_signal_handlers()
    analyzer = build_analyzer(cfg)
    from shared.detector import report_speed
    report_speed(analyzer.detector, cfg.width, cfg.height, cfg.fps)  # ms per frame on this CPU; a hint if slow
    return bus.run_stage("detect", lambda: run(cfg, analyzer))


if __name__ == "__main__":
    sys.exit(main())
