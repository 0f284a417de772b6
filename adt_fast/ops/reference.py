"""Pure-PyTorch reference of the tanh-Gaussian op: the executable spec.

Every other backend is tested against these functions in float64, so this is the one place in
Python where the maths of DESIGN §1 and the random-number mapping of docs/randomness.md are
written out. It favours clarity over speed; differentiation goes through plain autograd.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
PHILOX_MUL = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10
NORMALS_PER_CALL = 4  # one Philox call, four words, four normals (the op: of four consecutive elements)
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
LOG2 = math.log(2.0)


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a*b. int64 products wrap mod 2**64, which keeps both halves."""
    product = b * a
    return (product >> 32) & MASK32, product & MASK32


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding 32-bit words (Salmon et al., SC'11)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(PHILOX_MUL[0], c0)
        hi1, lo1 = _mulhilo(PHILOX_MUL[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_WEYL[0]) & MASK32, (k1 + PHILOX_WEYL[1]) & MASK32
    return c0, c1, c2, c3


def philox_words(seed: int, offset: int, numel: int, num_samples: int) -> torch.Tensor:
    """Raw Philox outputs, shape (k, ceil(numel/4), 4), int64 holding uint32 values.

    Sample s of the quad q (elements 4q .. 4q+3) uses key (seed_lo, seed_hi) and counter
    (q_lo, q_hi, (offset+s)_lo, (offset+s)_hi): see docs/randomness.md.
    """
    seed &= (1 << 64) - 1
    offset &= (1 << 64) - 1
    key = (seed & MASK32, seed >> 32)
    q = torch.arange(-(-numel // NORMALS_PER_CALL), dtype=torch.int64)
    # (offset + s) mod 2^64 as two 32-bit words, for every sample at once (int64 holds the carry)
    s = torch.arange(num_samples, dtype=torch.int64)
    low = (offset & MASK32) + (s & MASK32)
    high = ((offset >> 32) + (s >> 32) + (low >> 32)) & MASK32
    counter = [q & MASK32, q >> 32, low & MASK32, high]
    counter = [c.reshape(1, -1) if i < 2 else c.reshape(-1, 1) for i, c in enumerate(counter)]
    counter = [c.expand(num_samples, q.numel()) for c in counter]
    return torch.stack(philox4x32(tuple(counter), key), dim=-1)


def words_to_normals(words: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Box–Muller on 24-bit uniforms: 4 words -> 4 normals (r cos, r sin for each pair).

    a = (w >> 8) + 1 over 2**24 lies in (0, 1], so the log is finite; b = (w >> 8) / 2**24 in [0, 1).
    """
    scale = 2.0**-24
    a = ((words[..., 0::2] >> 8) + 1).to(dtype) * scale
    b = (words[..., 1::2] >> 8).to(dtype) * scale
    radius = torch.sqrt(-2.0 * torch.log(a))
    angle = (2.0 * math.pi) * b
    z = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1)
    return z.flatten(-2)  # lanes: cos01, sin01, cos23, sin23


def philox_normals(seed: int, offset: int, numel: int, num_samples: int,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard normals r[s, n] of shape (num_samples, numel) for one call of the op."""
    return normals_from_words(philox_words(seed, offset, numel, num_samples), numel, dtype)


def normals_from_words(words: torch.Tensor, numel: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Words (k, Q, 4) of Q quads -> the normals r[s, n] of their first `numel` elements, shape
    (k, numel): lane l of quad q is element 4 q + l."""
    z = words_to_normals(words, dtype)  # (k, Q, 4)
    return z.reshape(z.shape[0], -1)[:, :numel]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Kernels compute in float32, or float64 for float64 storage."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def softplus(rho: torch.Tensor) -> torch.Tensor:
    """log(1 + e^rho) to full precision on both sides (torch's threshold=20 cut-off is not)."""
    positive = rho.clamp(min=0.0)
    negative = rho.clamp(max=0.0)
    return torch.where(rho > 0, positive + torch.log1p(torch.exp(-positive)),
                       torch.log1p(torch.exp(negative)))


def log_softplus(rho: torch.Tensor) -> torch.Tensor:
    """log(softplus(rho)) without underflow: below -20 it is rho - e^rho / 2 to O(e^(2 rho))."""
    tail = rho.clamp(max=-20.0)
    body = rho.clamp(min=-20.0)
    return torch.where(rho < -20.0, tail - 0.5 * torch.exp(tail), torch.log(softplus(body)))


def log1m_tanh_sq(u: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(u)^2) = 2 (log 2 - |u| - softplus(-2|u|)), exact and finite for finite u."""
    a = u.abs()
    return 2.0 * (LOG2 - a - softplus(-2.0 * a))


def sigmoid_over_softplus(rho: torch.Tensor) -> torch.Tensor:
    """d log(softplus(rho)) / d rho = sigmoid(rho) / softplus(rho), finite down to rho = -inf."""
    tail = rho.clamp(max=-20.0)
    body = rho.clamp(min=-20.0)
    return torch.where(rho < -20.0, 1.0 - 0.5 * torch.exp(tail), torch.sigmoid(body) / softplus(body))


def in_compute_dtype(bound: float, ctype: torch.dtype) -> float:
    """A clamp bound past ctype's range as +-inf, as the kernels' conversions make it
    (torch.clamp refuses a float32 tensor a bound it cannot represent)."""
    return bound if abs(bound) <= torch.finfo(ctype).max else math.copysign(math.inf, bound)


def standard_normals(mean, noise, seed_offset, num_samples, ctype):
    """r of shape (k, *mean.shape): the given noise, or Philox normals of (seed, offset)."""
    if noise is not None:
        return noise.to(ctype)
    seed, offset = (int(v) for v in seed_offset.tolist())
    r = philox_normals(seed, offset, mean.numel(), num_samples, ctype)
    return r.reshape(num_samples, *mean.shape).to(mean.device).contiguous()


def sample_forward(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi):
    """delta (or clamp(x + delta, lo, hi)) of shape (k, B, *S) and -log p(delta) of shape (k, B).

    -log p(delta) = r^2/2 + log(2 pi)/2 + log sigma + log(1 - tanh(u)^2) + log epsilon per element,
    with u = mean + sigma r and sigma = softplus(std_param).
    """
    ctype = compute_dtype(mean.dtype)
    mu, rho = mean.to(ctype), std_param.to(ctype)
    r = standard_normals(mean, noise, seed_offset, num_samples, ctype)
    u = mu + softplus(rho) * r
    delta = epsilon * torch.tanh(u)
    per_element = 0.5 * r * r + log_softplus(rho) + log1m_tanh_sq(u)
    dims = math.prod(mean.shape[1:])
    constant = (LOG_SQRT_2PI + math.log(epsilon)) * dims
    neg_log_prob = per_element.reshape(num_samples, mean.shape[0], dims).sum(-1) + constant
    if x is None:
        out = delta
    else:
        out = torch.clamp(x.to(ctype) + delta, in_compute_dtype(lo, ctype), in_compute_dtype(hi, ctype))
    return out.to(mean.dtype).contiguous(), neg_log_prob


def sample_backward(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset,
                    num_samples, epsilon, lo, hi, need_grad_x=True):
    """Gradients w.r.t. (mean, std_param, x) with r held fixed (reparameterisation).

    With g_d the gradient of delta and g_e that of -log p (t = tanh(u), s' = sigmoid(rho)):
      grad_mean      = sum_k g_d eps (1 - t^2)           + g_e (-2 t)
      grad_std_param = sum_k g_d eps (1 - t^2) r s'      + g_e (s' / sigma - 2 t r s')
    With x, g_d passes only where the clamp did not bind (torch.clamp's rule) and grad_x = sum_k g_d
    (None without x or when `need_grad_x` is false).
    """
    ctype = compute_dtype(mean.dtype)
    mu, rho = mean.to(ctype), std_param.to(ctype)
    r = standard_normals(mean, noise, seed_offset, num_samples, ctype)
    u = mu + softplus(rho) * r
    t = torch.tanh(u)
    dtanh = torch.exp(log1m_tanh_sq(u))
    g_d = grad_out.to(ctype)
    grad_x = None
    if x is not None:
        unclamped = x.to(ctype) + epsilon * t
        lo, hi = in_compute_dtype(lo, ctype), in_compute_dtype(hi, ctype)
        g_d = torch.where((unclamped >= lo) & (unclamped <= hi), g_d, 0.0)
        if need_grad_x:
            grad_x = g_d.sum(0).to(x.dtype)
    g_e = grad_nlp.to(ctype).reshape(num_samples, -1, *([1] * (mean.dim() - 1)))
    d_u = g_d * (epsilon * dtanh) - 2.0 * g_e * t
    grad_mean = d_u.sum(0)
    grad_std = torch.sigmoid(rho) * (d_u * r).sum(0) + sigmoid_over_softplus(rho) * g_e.sum(0)
    return grad_mean.to(mean.dtype), grad_std.to(std_param.dtype), grad_x
