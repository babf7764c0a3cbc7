"""Structural re-parameterisation (RepVGG, Ding et al. 2021, arXiv:2101.03697): a network trained with a 1x1
conv + BN and an identity BN beside each 3x3 conv + BN (`training.models`, rep=True) is folded into its plain
twin, one 3x3 conv per block, for export. Each branch is a linear map followed by BN, so in inference mode each
is a 3x3 kernel and a bias (the 1x1 kernel at the centre of a 3x3 one, the identity as a centre one-hot) and
their sum is one conv: the fused network computes the same function at the plain network's cost.

The plain twin keeps the 3x3 branch's BN (its scale, mean and variance; the shift takes the summed bias) and the
summed kernel divided by that scale, so the fused network has exactly the plain architecture, layer names
included, in the same terms as the plain network it started from: a rep model started from a plain one with its
side branches silent folds back to that network's very weights, and a fused run can be averaged with other
fine-tunes of that start (`ferlive soup`). It exports, evaluates and initialises a fine-tune like any other run of
that architecture. (Where a BN scale is zero the BN passes the bias through instead: scale 1, shift = bias.)"""
from __future__ import annotations

import numpy as np

REP_SUFFIX = "_rep"


def is_rep(name: str) -> bool:
    """True for a registered model name that trains with RepVGG blocks."""
    return name.endswith(REP_SUFFIX)


def plain_name(name: str) -> str:
    """The plain architecture a rep model folds into (vgg_small_mid96_rep -> vgg_small_mid96)."""
    return name.removesuffix(REP_SUFFIX)


def _bn_scale_shift(bn) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) of an inference-mode BatchNormalization layer: y = scale * x + shift."""
    gamma, beta, mean, var = (np.asarray(w, dtype=np.float64) for w in bn.get_weights())
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def fold_block(model, block: str) -> tuple[np.ndarray, np.ndarray]:
    """(kernel (3,3,cin,cout), bias (cout,)) of one rep block of `model`, all its branches summed."""
    conv = model.get_layer(f"{block}_conv").get_weights()[0].astype(np.float64)
    scale, shift = _bn_scale_shift(model.get_layer(f"{block}_bn"))
    kernel, bias = conv * scale, shift.copy()
    names = {layer.name for layer in model.layers}
    if f"{block}_rep1" in names:
        one = model.get_layer(f"{block}_rep1").get_weights()[0].astype(np.float64)  # (1,1,cin,cout)
        scale, shift = _bn_scale_shift(model.get_layer(f"{block}_rep1_bn"))
        kernel[1, 1] += one[0, 0] * scale
        bias += shift
    if f"{block}_repid_bn" in names:
        scale, shift = _bn_scale_shift(model.get_layer(f"{block}_repid_bn"))
        kernel[1, 1] += np.diag(scale)
        bias += shift
    return kernel, bias


def fuse(model):
    """The plain twin of a rep `model` (a new keras.Model of the registered plain architecture) with every rep
    block folded into its 3x3 conv and the other layers' weights copied. A plain model is returned as it is."""
    from training.models import create_model

    if not is_rep(model.name):
        return model
    plain = create_model(plain_name(model.name))
    blocks = {layer.name.removesuffix("_rep_add") for layer in model.layers if layer.name.endswith("_rep_add")}
    for layer in plain.layers:
        if not layer.weights:
            continue
        block = layer.name.removesuffix("_conv").removesuffix("_bn")
        if block in blocks and layer.name == f"{block}_conv":
            kernel, bias = fold_block(model, block)
            bn = plain.get_layer(f"{block}_bn")
            main = model.get_layer(f"{block}_bn")
            gamma, _, mean, var = main.get_weights()
            scale, _ = _bn_scale_shift(main)
            if np.all(np.abs(scale) > 1e-6):  # keep the 3x3 branch's BN, so the kernel stays in its twin's terms
                kernel, bn_weights = kernel / scale, [gamma, bias + mean * scale, mean, var]
            else:  # pass the bias through: gamma 1, beta bias, mean 0, var 1 - eps (so sqrt(var + eps) is 1)
                bn_weights = [np.ones_like(bias), bias, np.zeros_like(bias), np.full_like(bias, 1.0 - bn.epsilon)]
            layer.set_weights([kernel.astype(np.float32)])
            bn.set_weights([np.asarray(w, np.float32) for w in bn_weights])
        elif block in blocks:
            continue  # its BN, set with the conv above
        else:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return plain
