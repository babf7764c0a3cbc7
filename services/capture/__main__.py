"""python -m services.capture --source 0|path.mp4|rtsp://…|demo[,another,…] [--loop] [--fps 30] [--width 640 --height 480]"""
from __future__ import annotations

import sys

from shared import bus
from shared.config import Config
from services.capture.stage import run


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env_and_args(argv, prog="python -m services.capture",
                                   description="Publish frames from cameras, video files, streams or the demo (several, comma-separated, side by side).")
    bus.setup_logging(cfg, "capture")
    bus.install_signal_handlers()
    return bus.run_stage("capture", lambda: run(cfg), final=(FileNotFoundError,))


if __name__ == "__main__":
    sys.exit(main())
