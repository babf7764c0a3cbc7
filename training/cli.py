"""ferlive command line: explore, train, distill, evaluate, export, predict, analyze, pack-data, pack-model, soup. Every subcommand has --help."""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# Each module registers its own subcommand through `add_cli(subparsers)`; heavy imports stay inside the
# command functions so `ferlive --help` is instant and `ferlive predict` never loads TensorFlow.
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "training.explore",
    "training.train",
    "training.distill",
    "training.evaluate",
    "training.export",
    "training.predict",
    "training.analyze",
    "training.pack",
    "training.soup",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferlive", description="ferlive: facial expression recognition")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # a subcommand whose module is not written yet
        module.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
