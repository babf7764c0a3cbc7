"""`ferlive soup`: several fine-tunes of one network averaged weight by weight into one network of the same
size and cost (a "model soup", Wortsman et al. 2022, arXiv:2203.05482). The ingredients must share their
starting point (e.g. `ferlive distill --init-from models/X` with different learning rates or optimisers), so
they lie in one basin where the average of their weights is itself a good network.

Greedy soup (the default): the ingredients are sorted by PublicTest accuracy (Keras), and each is added only
if the soup's PublicTest accuracy does not fall; the best ingredient alone is the worst case. `--judge both`
scores every step by the mean of PublicTest accuracy against FER2013's labels and against the FER+ majority vote
(the second metric; faces without a majority count in the first part only), so that a soup that fits FER2013's
own labels at the cost of the crowd's is not chosen. `--uniform` averages all of them. Batch-norm statistics are
averaged like the other weights. PrivateTest is never used for any choice: it is measured once, by the export that
writes the soup's model directory.

    python -m training soup --run-dir runs/ft_a runs/ft_b runs/ft_c --out models/soup [--weights last]
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from shared.preprocess import to_model_input

log = logging.getLogger(__name__)


def _weighted_layers(model) -> list:
    """The layers whose weights make the network (the augmentation block, identity at inference, aside)."""
    return [layer for layer in model.layers if layer.weights and layer.name != "augment"]


def _signature(model) -> list[tuple[str, tuple[tuple[int, ...], ...]]]:
    return [(layer.name, tuple(tuple(w.shape) for w in layer.get_weights())) for layer in _weighted_layers(model)]


def check_ingredients(models: list, names: list[str]) -> None:
    """ValueError naming the first ingredient whose architecture (layers and weight shapes) differs from the
    first one's: weights of different networks cannot be averaged."""
    ref = _signature(models[0])
    for model, name in zip(models[1:], names[1:]):
        if model.name != models[0].name or _signature(model) != ref:
            raise ValueError(f"{name} is a {model.name} whose layers differ from {names[0]} ({models[0].name}): "
                             f"a soup averages fine-tunes of one network")


def average_weights(target, models: list) -> None:
    """Set `target`'s weights (augmentation aside) to the element-wise mean of `models`' weights. Integer
    arrays (counters, seeds) are taken from the first model."""
    for layer in _weighted_layers(target):
        per_model = [m.get_layer(layer.name).get_weights() for m in models]
        layer.set_weights([np.mean(np.stack(ws), axis=0).astype(ws[0].dtype)
                           if np.issubdtype(ws[0].dtype, np.floating) else ws[0]
                           for ws in zip(*per_model)])


def _score(model, x: np.ndarray, labels: np.ndarray, majority: np.ndarray | None = None) -> float:
    """Accuracy against `labels`; with `majority` (FER+ majority labels, EXCLUDED where none), the mean of that
    and the accuracy against the majority over the faces that have one."""
    from training.ferplus import majority_accuracy

    probs = model.predict(x, batch_size=512, verbose=0)
    acc = float(np.mean(probs.argmax(1) == labels))
    return acc if majority is None else 0.5 * (acc + majority_accuracy(probs, majority)["accuracy"])


def cook(models: list, x: np.ndarray, labels: np.ndarray, greedy: bool = True,
         majority: np.ndarray | None = None) -> tuple[object, dict]:
    """Average `models` into the first one's architecture, greedily (see the module doc) or uniformly, judged
    on (x, labels) — PublicTest — or, with `majority` (the same faces' FER+ majority labels), on the mean of
    both accuracies. Returns (the soup, a record: each ingredient's score, which were kept, the soup's score)."""
    from training.models import create_model

    def score(model) -> float:
        return _score(model, x, labels, majority)

    alone = [score(m) for m in models]
    order = sorted(range(len(models)), key=lambda i: -alone[i])
    soup = create_model(models[0].name)
    kept = order if not greedy else [order[0]]
    average_weights(soup, [models[i] for i in kept])
    best = score(soup)
    tried = []
    judged = "accuracy" if majority is None else "mean of label and FER+ majority accuracy"
    if greedy:
        for i in order[1:]:
            average_weights(soup, [models[j] for j in kept + [i]])
            acc = score(soup)
            tried.append({"ingredient": i, "accuracy": acc, "kept": acc >= best})
            log.info("soup + ingredient %d: PublicTest %s %.4f (%s %.4f)", i, judged, acc,
                     "kept, was" if acc >= best else "left out, stays", best)
            if acc >= best:
                kept, best = kept + [i], acc
        average_weights(soup, [models[j] for j in kept])
    return soup, {"method": "greedy" if greedy else "uniform",
                  "judged_on": "PublicTest" if majority is None else "PublicTest: mean of the accuracy against "
                                                                     "FER2013's labels and the FER+ majority",
                  "ingredients_alone": alone, "kept": sorted(kept), "greedy_steps": tried, "accuracy": best}


def make_soup(paths: list[str | Path], out_dir: str | Path, data: str | Path | None = None, weights: str = "best",
              greedy: bool = True, name: str | None = None, keep_float32_file: bool = True,
              max_int8_drop: float | None = None, judge: str = "labels") -> dict:
    """Soup of the runs (or exported single-network model directories) at `paths`, exported to out_dir like
    `ferlive export` does (every form measured, int8 gate). weights: "best" (each run's best PublicTest
    checkpoint) or "last" (each run's final weights). judge: "labels" (PublicTest accuracy) or "both" (its mean
    with the FER+ majority accuracy; ValueError when the votes are not there). Returns the card."""
    from training.data import load_fer2013
    from training.export import MAX_INT8_DROP, _load_members, export_model

    if len(paths) < 2:
        raise ValueError("a soup needs at least two ingredients")
    if judge not in ("labels", "both"):
        raise ValueError(f"judge must be 'labels' or 'both', not {judge!r}")
    models, mirrored, records, data = _load_members(paths, data, weights)
    if any(mirrored):
        raise ValueError(f"{[str(p) for p, m in zip(paths, mirrored) if m]}: flip averaging is baked in; "
                         f"use the run directories (a soup averages one network's weights)")
    check_ingredients(models, [str(p) for p in paths])
    fer = load_fer2013(data)
    public = fer.split("PublicTest")
    majority = None
    if judge == "both":
        from training.ferplus import majority_or_none, votes_or_none

        majority = majority_or_none(votes_or_none(data), fer, "PublicTest")
        if majority is None:
            raise ValueError(f"--judge both needs the FER+ votes for {data} (the image zip or a pack-data copy)")
    soup, record = cook(models, to_model_input(public.faces), public.labels, greedy, majority)
    own = [float((r.get("timing") or {}).get("seconds", 0.0)) for r in records]
    chain = [float((r.get("timing") or {}).get("seconds_with_init_chain", o)) - o for r, o in zip(records, own)]
    timing = {"seconds": sum(own), "seconds_with_init_chain": sum(own) + max(chain),
                        "note": "the ingredients' own training time, plus once the chain of the weights they "
                                "started from"}
    return export_model(soup, out_dir, data=data, name=name or f"{soup.name}_soup", training={"soup": record, "ingredients": records, "timing": timing},
                        keep_float32_file=keep_float32_file,
                        max_int8_drop=MAX_INT8_DROP if max_int8_drop is None else max_int8_drop)


def add_cli(sub) -> None:
    p = sub.add_parser("soup", help="average fine-tunes of one network into one (a model soup) and export it",
                       description="Average the weights of several fine-tunes of one network that started from "
                                   "the same weights (greedy on PublicTest by default), then export the result "
                                   "like `ferlive export` (card with every form's metrics). The soup costs what "
                                   "one network costs.")
    p.add_argument("--run-dir", required=True, nargs="+", help="two or more training runs of the same network")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--weights", choices=("best", "last"), default="best",
                   help="each run's best PublicTest checkpoint, or its final weights (last.keras)")
    p.add_argument("--uniform", action="store_true", help="average every ingredient (default: greedy)")
    p.add_argument("--judge", choices=("labels", "both"), default="labels",
                   help="greedy steps judged on PublicTest accuracy against FER2013's labels, or on its mean "
                        "with the accuracy against the FER+ majority vote")
    p.add_argument("--data", default=None, help="FER2013 CSV, folder or zip (default: the first run's data)")
    p.add_argument("--name", default=None, help="model name for the card (default: <architecture>_soup)")
    p.add_argument("--max-int8-drop", type=float, default=1.0,
                   help="largest allowed int8 PublicTest accuracy loss, in points")
    p.add_argument("--no-float32-file", action="store_true",
                   help="delete model_float32.tflite after measuring it (the card keeps its metrics)")
    p.set_defaults(func=_cmd_soup)


def _cmd_soup(a) -> int:
    from training.export import ExportError

    try:
        card = make_soup(a.run_dir, a.out, data=a.data, weights=a.weights, greedy=not a.uniform, name=a.name,
                         keep_float32_file=not a.no_float32_file, max_int8_drop=a.max_int8_drop / 100,
                         judge=a.judge)
    except (ValueError, FileNotFoundError) as e:
        log.error("soup: %s", e)
        return 2
    except ExportError as e:
        log.error("export failed: %s", e)
        return 1
    s, m = card["training"]["soup"], card["metrics"]
    print(f"soup of {len(s['kept'])} of {len(s['ingredients_alone'])} ingredients ({s['method']}), exported to "
          f"{a.out}: " + ", ".join(f"{form} {m['PublicTest'][form]['accuracy']:.4f}/{m['PrivateTest'][form]['accuracy']:.4f}"
                                   for form in ("keras", "float32", "int8")) + " (PublicTest/PrivateTest)")
    return 0
