"""Sharpness-aware minimisation (Foret et al., 2021, "Sharpness-Aware Minimization for Efficiently Improving
Generalization"): each step takes the gradient at the weights moved uphill by `rho` along the normalised gradient,
w - lr * grad L(w + rho * g / |g|), and applies it at w with the run's own optimiser. Flat minima generalise
better under label noise (FER2013's) and average better in a soup. Two forward and backward passes a step.

Keras has no SAM and the maintained implementations are PyTorch ones (davda54/sam), so this is a replacement
train step for the TensorFlow backend, written after Keras's own `train_step`. Both forward passes of a step see
the same batch: the random layers' seed states are rewound before the second pass, so the mirror flip and any
dropout draw the same, and BatchNorm's moving statistics keep the first pass's update only (the second pass runs
at the perturbed weights).
"""
from __future__ import annotations

import functools
import types


def use_sam(model, rho: float) -> None:
    """Make `model.fit` take SAM steps of radius `rho` (> 0). Call before compile/fit; TensorFlow backend only."""
    import keras

    if not rho > 0:
        raise ValueError(f"--sam is the radius of the weight perturbation and must be > 0, got {rho}")
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"--sam needs the TensorFlow backend (Keras runs on {keras.backend.backend()}); "
                         f"run it here, not on a lent accelerator's JAX")
    model.train_step = types.MethodType(functools.partial(_sam_train_step, rho=float(rho)), model)


def _sam_train_step(self, data, rho: float):
    import keras
    import tensorflow as tf

    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    weights = self.trainable_variables
    states = self.non_trainable_variables  # seed generators and BatchNorm moving statistics
    start = [tf.identity(v) for v in states]

    with tf.GradientTape() as tape:
        y_pred = self(x, training=True)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
    tracker = getattr(self, "_loss_tracker", None)  # the `loss` Keras logs; private, hence the guard
    if tracker is not None:
        tracker.update_state(loss, sample_weight=tf.shape(x)[0])
    grads = tape.gradient(loss, weights)
    after_first = [tf.identity(v) for v in states]

    scale = rho / (tf.linalg.global_norm(grads) + 1e-12)
    eps = [tf.zeros_like(w) if g is None else g * scale for w, g in zip(weights, grads)]  # None: w unused
    for v, s in zip(states, start):
        v.assign(s)  # the second pass draws the same flip and dropout as the first
    for w, e in zip(weights, eps):
        w.assign_add(e)
    with tf.GradientTape() as tape:
        loss_at_peak = self.compute_loss(x=x, y=y, y_pred=self(x, training=True), sample_weight=sample_weight,
                                         training=True)
    sharp_grads = tape.gradient(loss_at_peak, weights)
    for w, e in zip(weights, eps):
        w.assign_sub(e)
    for v, s in zip(states, after_first):
        v.assign(s)
    self.optimizer.apply_gradients(zip(sharp_grads, weights))
    return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
