"""benchmarks/class_offsets.py: the offsets it fits fix a real per-class bias, and the held-out check sees it."""
import numpy as np

from benchmarks.class_offsets import fit_offsets, held_out_gains


def _biased_scores(n: int = 2000, bias: float = 0.0, seed: int = 0):
    """Log-scores of a 3-class model that knows the label (a margin of 1) but adds `bias` to class 0."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    logp = rng.normal(0, 1, (n, 3))
    logp[np.arange(n), labels] += 1.0
    logp[:, 0] += bias
    return logp, labels


def test_offsets_undo_a_bias_and_the_held_out_half_gains():
    logp, labels = _biased_scores(bias=0.8)
    offsets = fit_offsets(logp, labels)
    assert offsets[0] - offsets[1:].mean() < -0.4       # class 0 pushed down again
    assert ((logp + offsets).argmax(1) == labels).mean() > (logp.argmax(1) == labels).mean() + 0.03
    assert held_out_gains(logp, labels, repeats=5).mean() > 0.02


def test_without_a_bias_the_held_out_half_gains_nothing():
    logp, labels = _biased_scores(bias=0.0)
    assert abs(held_out_gains(logp, labels, repeats=5).mean()) < 0.01
