"""python -m services.capture --source 0|path.mp4|rtsp://…|demo[,another,…] [--loop] [--fps 30] [--width 640 --height 480]"""
from __future__ import annotations

import sys

from shared import bus
from shared.config import Config, ConfigError
from services.capture.stage import run


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env_and_args(argv, prog="python -m services.capture",
                                   description="Publish frames from cameras, video files, streams or the demo (several, comma-separated, side by side).")
    bus.setup_logging(cfg, "capture")
    bus.install_signal_handlers()
    try:
        run(cfg)
    except (bus.Shutdown, KeyboardInterrupt):
        pass
    except ConfigError as exc:  # bad configuration (e.g. CURVE keys): final, the supervisor does not restart
        print(f"capture: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
