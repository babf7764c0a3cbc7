"""python -m services.detect: frames in, faces (boxes + 48x48 gray crops) out to the classify workers."""
from __future__ import annotations

import sys

from shared import bus
from shared.config import Config, ConfigError
from services.detect.stage import run


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env_and_args(argv, prog="python -m services.detect",
                                   description="Find faces in frames and send 48x48 crops to classify.")
    bus.setup_logging(cfg, "detect")
    bus.install_signal_handlers()
    from services.detect.detector import FaceDetector  # the detector engineer's module
    detector = FaceDetector(cfg)
    try:
        run(cfg, detector)
    except (bus.Shutdown, KeyboardInterrupt):
        pass
    except ConfigError as exc:  # bad configuration (e.g. CURVE keys): final, the supervisor does not restart
        print(f"detect: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
