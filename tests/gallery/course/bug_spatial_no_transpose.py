"""cs231n assignment 2, ``layers.py``: spatial batch norm that reshapes without transposing.

``x.reshape(-1, C)`` on (N, C, H, W) input puts H*W consecutive values of one channel into each
row, so each column of the (N*H*W, C) array mixes channels and positions; reshape accepts it
whatever the sizes.  The vanilla layer is correct.
"""

import numpy as np


def batchnorm_forward(x, gamma, beta, bn_param):
    """Forward pass for batch normalization (see the course template); returns (out, cache)."""
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)

    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))

    out, cache = None, None
    if mode == "train":
        sample_mean = np.mean(x, axis=0)
        sample_var = np.var(x, axis=0)
        x_norm = (x - sample_mean) / np.sqrt(sample_var + eps)
        out = gamma * x_norm + beta
        cache = (x_norm, gamma, sample_var, eps)
        running_mean = momentum * running_mean + (1 - momentum) * sample_mean
        running_var = momentum * running_var + (1 - momentum) * sample_var
    elif mode == "test":
        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
    else:
        raise ValueError('Invalid forward batchnorm mode "%s"' % mode)

    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def batchnorm_backward(dout, cache):
    """Backward pass for batch normalization; returns (dx, dgamma, dbeta)."""
    x_norm, gamma, var, eps = cache
    N = dout.shape[0]
    dbeta = dout.sum(axis=0)
    dgamma = (dout * x_norm).sum(axis=0)
    dxn = dout * gamma
    dx = (N * dxn - dxn.sum(axis=0) - x_norm * (dxn * x_norm).sum(axis=0)) / (N * np.sqrt(var + eps))
    return dx, dgamma, dbeta


def spatial_batchnorm_forward(x, gamma, beta, bn_param):
    """Spatial batch normalization of (N, C, H, W) input through the vanilla layer."""
    N, C, H, W = x.shape
    out_flat, cache = batchnorm_forward(x.reshape(-1, C), gamma, beta, bn_param)
    out = out_flat.reshape(N, C, H, W)
    return out, cache


def spatial_batchnorm_backward(dout, cache):
    """Backward pass for spatial batch normalization."""
    N, C, H, W = dout.shape
    dx_flat, dgamma, dbeta = batchnorm_backward(dout.reshape(-1, C), cache)
    return dx_flat.reshape(N, C, H, W), dgamma, dbeta
