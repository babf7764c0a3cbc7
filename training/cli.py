"""ferlive command line: explore, train, evaluate, export, predict. Every subcommand has --help."""
from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a registered model on FER2013 (resumable)",
                       description="Train on Training, keep the best PublicTest checkpoint; rerun the same "
                                   "command to resume an interrupted run.")
    p.add_argument("--model", default="xception_wide", help="registered model name (see `ferlive models`)")
    p.add_argument("--data", default=None, help="FER2013 CSV, image-folder tree or zip (default: ../shared's zip)")
    p.add_argument("--run-dir", default="runs/default", help="where checkpoints, history and curves go")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=["cosine", "plateau", "constant"], default="cosine")
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    p.add_argument("--erasing", type=float, default=0.0, help="random-erasing strength (0: off)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--per-class", type=int, default=None, help="cap faces per class and split (quick runs)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(a) -> int:
    from training.augment import AugmentConfig
    from training.train import TrainConfig, train
    aug = None if a.no_augment else AugmentConfig(erasing=a.erasing)
    cfg = TrainConfig(model=a.model, data=a.data, run_dir=a.run_dir, epochs=a.epochs, batch_size=a.batch_size,
                      optimizer=a.optimizer, lr=a.lr, weight_decay=a.weight_decay, schedule=a.schedule,
                      warmup_epochs=a.warmup_epochs, label_smoothing=a.label_smoothing, augment=aug,
                      seed=a.seed, per_class=a.per_class)
    train(cfg)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferlive", description="ferlive: facial expression recognition")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
