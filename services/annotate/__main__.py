"""python -m services.annotate: the sink. Joins frames with their predictions (in order), tracks and
smooths faces, draws them, and publishes annotated frames for the web."""
from __future__ import annotations

import sys

from shared import bus
from shared.config import Config, ConfigError
from services.annotate.stage import run


def main(argv: list[str] | None = None) -> int:
    cfg = Config.from_env_and_args(argv, prog="python -m services.annotate",
                                   description="Reorder, track, smooth and draw predictions.")
    bus.setup_logging(cfg, "annotate")
    bus.install_signal_handlers()
    try:
        run(cfg)
    except (bus.Shutdown, KeyboardInterrupt):
        pass
    except ConfigError as exc:  # bad configuration (e.g. CURVE keys): final, the supervisor does not restart
        print(f"annotate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
