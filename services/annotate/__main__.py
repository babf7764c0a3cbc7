"""python -m services.annotate: the sink. Joins frames with their predictions (in order), tracks and
smooths faces, draws them, and publishes annotated frames for the web."""
from __future__ import annotations

import sys

from shared import bus
from shared.config import Config
from services.annotate.stage import run


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env_and_args(argv, prog="python -m services.annotate",
                                   description="Reorder, track, smooth and draw predictions.")
    bus.setup_logging(cfg, "annotate")
    bus.install_signal_handlers()
    return bus.run_stage("annotate", lambda: run(cfg))


if __name__ == "__main__":
    sys.exit(main())
