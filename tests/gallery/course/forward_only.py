"""A tutorial's numpy batch norm: the forward pass only, in the cs231n signature.

Blog posts that explain batch norm often stop at the forward pass ("the backward is left as
an exercise"); the function follows the course's ``batchnorm_forward(x, gamma, beta, bn_param)``
so that it can be dropped into the assignment's network.  There is no ``batchnorm_backward``.
"""

import numpy as np


def batchnorm_forward(x, gamma, beta, bn_param):
    """Normalise each feature of a mini-batch, then scale and shift it.

    x: (N, D) mini-batch; gamma, beta: (D,); bn_param: dict with 'mode' ('train' or 'test')
    and optionally 'eps', 'momentum', 'running_mean', 'running_var'.
    Returns (out, cache).
    """
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)
    N, D = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))

    if mode == "train":
        mean = x.mean(axis=0)                 # mini-batch mean
        var = x.var(axis=0)                   # mini-batch variance (biased)
        x_hat = (x - mean) / np.sqrt(var + eps)
        running_mean = momentum * running_mean + (1 - momentum) * mean
        running_var = momentum * running_var + (1 - momentum) * var
    elif mode == "test":
        x_hat = (x - running_mean) / np.sqrt(running_var + eps)
    else:
        raise ValueError("mode must be 'train' or 'test', got %r" % mode)
    out = gamma * x_hat + beta

    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, (x_hat, gamma)
