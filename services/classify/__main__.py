"""python -m services.classify: a worker (run several: `honcho start -c classify=4`) that pulls faces,
runs the int8 TFLite expression model on all faces of a frame at once, and pushes predictions to annotate."""
from __future__ import annotations

import sys

from shared import bus
from shared.config import Config
from services.classify.worker import run


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env_and_args(argv, prog="python -m services.classify",
                                   description="Classify face crops with the exported model.")
    bus.setup_logging(cfg, "classify")
    bus.install_signal_handlers()
    from shared.model import FacialExpressionModel  # TFLite via ai-edge-litert; never TensorFlow
    model = FacialExpressionModel(path=cfg.model_dir or None)
    try:
        run(cfg, model)
    except (bus.Shutdown, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
