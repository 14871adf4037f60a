"""Deliberately wrong initialisers, written the way their authors write them (bug classes I1-I5, seed 001).

Each has the signature of the torch.nn.init function it claims to implement; ``tests/test_init.py``
runs the ``init`` suite on each and asserts that the check meant to catch it fails, with a message
naming the mistake.
"""

import math

import torch
from torch.nn.init import _calculate_fan_in_and_fan_out, calculate_gain


def kaiming_normal_in_out_layout_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """I4 / seed 001: the numpy habit ``randn(fan_in, fan_out)`` applied to torch's (out, in, *k) weight."""
    if tensor.dim() < 2:
        raise ValueError("need at least 2 dimensions")
    if 0 in tensor.shape:
        import warnings
        warnings.warn("Initializing zero-element tensors is a no-op")
        return tensor
    receptive = math.prod(tensor.shape[:-2])
    fan_in, fan_out = tensor.shape[-2] * receptive, tensor.shape[-1] * receptive  # Keras's compute_fans
    fan = fan_in if mode == "fan_in" else fan_out
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def kaiming_uniform_fans_unpacked_swapped_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """Seed 001's slip: fan_out used for fan_in (the pair unpacked in the wrong order)."""
    if 0 in tensor.shape:
        import warnings
        warnings.warn("Initializing zero-element tensors is a no-op")
        return tensor
    fan_out, fan_in = _calculate_fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def _kaiming_std(tensor, a, mode, nonlinearity, gain=None):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    return (calculate_gain(nonlinearity, a) if gain is None else gain) / math.sqrt(fan)


def _zero_warning(tensor):
    if 0 in tensor.shape:
        import warnings
        warnings.warn("Initializing zero-element tensors is a no-op")
        return True
    return False


def kaiming_normal_no_gain_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """The ReLU gain missing: std = 1 / sqrt(fan) (gain 1 instead of sqrt 2)."""
    if _zero_warning(tensor):
        return tensor
    std = _kaiming_std(tensor, a, mode, nonlinearity, gain=1.0)
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def kaiming_uniform_no_sqrt3_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """I3 (tch-rs#573): the uniform bound set to the std, sqrt(3) missing."""
    if _zero_warning(tensor):
        return tensor
    bound = _kaiming_std(tensor, a, mode, nonlinearity)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def kaiming_normal_truncated_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """JAX's he_normal ported to torch: truncated at 2 sd with the 0.8796 correction, where torch's is untruncated."""
    if _zero_warning(tensor):
        return tensor
    std = _kaiming_std(tensor, a, mode, nonlinearity) / 0.87962566103423978
    return torch.nn.init.trunc_normal_(tensor, 0.0, std, -2 * std, 2 * std, generator=generator)


def keras_he_normal_uncorrected_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """I5: Keras's HeNormal for (in, out) kernels, truncated at 2 sd but without the 0.8796 correction."""
    receptive = math.prod(tensor.shape[:-2])
    fan_in, fan_out = tensor.shape[-2] * receptive, tensor.shape[-1] * receptive
    fan = max(1, fan_in if mode == "fan_in" else fan_out)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return torch.nn.init.trunc_normal_(tensor, 0.0, std, -2 * std, 2 * std, generator=generator)


def kaiming_normal_not_in_place_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """Not in place: returns a new tensor and leaves the weight alone (nn.Module.reset_parameters ignores it)."""
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    return torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype, device=tensor.device) * std


def kaiming_normal_ignores_generator_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """generator= accepted for the signature's sake, then the global RNG is used."""
    if _zero_warning(tensor):
        return tensor
    std = _kaiming_std(tensor, a, mode, nonlinearity)
    with torch.no_grad():
        return tensor.normal_(0, std)


def kaiming_normal_std_as_variance_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """He's Var[w] = 2 / fan_in written as the standard deviation (the square root forgotten)."""
    if _zero_warning(tensor):
        return tensor
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    fan = fan_in if mode == "fan_in" else fan_out
    std = calculate_gain(nonlinearity, a) ** 2 / fan
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def kaiming_uniform_a_not_squared_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """I2: the leaky-ReLU gain written sqrt(2 / (1 + a)) instead of sqrt(2 / (1 + a^2))."""
    if _zero_warning(tensor):
        return tensor
    gain = math.sqrt(2.0 / (1 + a)) if nonlinearity == "leaky_relu" else calculate_gain(nonlinearity, a)
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity, gain=gain)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def kaiming_uniform_always_he_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """I1: "kaiming_uniform_ is He init": a and nonlinearity ignored, so nn.Linear's a=sqrt(5) gets sqrt(6/fan_in)."""
    if _zero_warning(tensor):
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std(tensor, 0, mode, "relu")
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def kaiming_normal_no_checks_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """Fans by arithmetic on numel: a bias vector is silently filled, a zero-element weight divides by zero."""
    fan_in = tensor.numel() // tensor.shape[0]
    fan_out = tensor.numel() // tensor.shape[1] if tensor.dim() > 1 else fan_in
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan_in if mode == "fan_in" else fan_out)
    with torch.no_grad():
        return tensor.normal_(0, std, generator=generator)


def kaiming_normal_no_grad_missing_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """No torch.no_grad(): fails on nn.Parameter weights (a leaf that requires grad, filled in place)."""
    if _zero_warning(tensor):
        return tensor
    return tensor.normal_(0, _kaiming_std(tensor, a, mode, nonlinearity), generator=generator)


def kaiming_uniform_reshaped_copy_(tensor, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    """Fills ``tensor.reshape(out, -1)``: a view for contiguous weights, a silent copy for strided ones."""
    if _zero_warning(tensor):
        return tensor
    bound = math.sqrt(3.0) * _kaiming_std(tensor, a, mode, nonlinearity)
    flat = tensor.reshape(tensor.shape[0], -1)
    with torch.no_grad():
        flat.uniform_(-bound, bound, generator=generator)
    return tensor


def xavier_uniform_ignores_gain_(tensor, gain=1.0, generator=None):
    """gain in the signature but not in the formula."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound, generator=generator)


def xavier_normal_fan_in_only_(tensor, gain=1.0, generator=None):
    """Seed 001's "Xavier" randn / sqrt(fan_in) (LeCun) under torch's name, which averages the fans."""
    fan_in, _ = _calculate_fan_in_and_fan_out(tensor)
    with torch.no_grad():
        return tensor.normal_(0, gain / math.sqrt(fan_in), generator=generator)


def trunc_normal_bounds_in_std_units_(tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """a, b read as multiples of std (Keras/JAX style); torch's trunc_normal_ takes absolute bounds."""
    return torch.nn.init.trunc_normal_(tensor, mean, std, mean + a * std, mean + b * std, generator=generator)


def uniform_loc_scale_(tensor, a=0.0, b=1.0, generator=None):
    """scipy's (loc, scale) habit: U(a, a + b) instead of U(a, b)."""
    with torch.no_grad():
        return tensor.uniform_(a, a + b, generator=generator)
