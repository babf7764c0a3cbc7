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
    from shared.model import FacialExpressionModel, report_speed  # ai-edge-litert; never TensorFlow
    try:
        model = FacialExpressionModel(path=cfg.model_dir or None)
    except (FileNotFoundError, ValueError) as exc:  # a bad --model-dir: final, not restarted
        print(f"classify: cannot load the model: {exc}", file=sys.stderr)
        return 2
    report_speed(model)  # ms per face on this CPU, and a warning where it is slow (e.g. no VNNI)
    return bus.run_stage("classify", lambda: run(cfg, model))


if __name__ == "__main__":
    sys.exit(main())
