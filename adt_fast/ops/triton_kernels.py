"""Triton kernels of the tanh-Gaussian op (the `triton` backend).

Same contract as `reference.sample_forward` / `reference.sample_backward` / `reference.philox_words`
(see docs/triton.md for the design, docs/randomness.md for the random-number mapping):

- `_forward_kernel`: programs over tiles of (examples x elements), one quad of four consecutive
  elements per thread. A tile loads mean/std_param once, then draws the k samples of its elements,
  one Philox4x32-10 call per quad and sample (Box-Muller cos/sin on both word pairs: the normals
  of the quad's four elements), writes delta (or clamp(x + delta)) and one partial sum of -log p
  per (sample, example, element chunk) into a float32 (float64) buffer that one `sum(-1)`
  reduces: deterministic, no float atomics.
- `_backward_kernel`: the same tiles; it regenerates r from (seed, offset) and accumulates the k
  samples per element in registers; nothing of size k x N is saved by the forward.
- `_philox_words_kernel`: the raw uint32 words, for the cross-backend bit-identity tests.

`seed_offset` stays on the device and is read with `tl.load` (no host synchronisation; CUDA-graph
safe). Compute is float32 for float16/bfloat16/float32 storage and float64 for float64. The
scalars (epsilon, clamp bounds, the -log p constant) travel as the int64 bit patterns of their
float64 values, so float64 kernels see them unrounded (Triton types Python floats as fp32).

Only APIs present in triton 3.6 and newer are used (tl.umulhi, tl.mul/tl.add with
sanitize_overflow, tl.exp/log/sqrt/sin/cos, tl.sum, tl.where). Everything also runs on CPU tensors
under TRITON_INTERPRET=1 (set before this module is imported).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import struct

import torch
import triton
import triton.language as tl
from torch.torch_version import TorchVersion

OLDEST_TRITON = (3, 6)

if TorchVersion(triton.__version__) < OLDEST_TRITON:  # torch's version comparison, local tags and all
    # Older releases import these kernels and only fail when one is first run (triton 3.1, which
    # torch 2.5 pins, lacks tl.mul), so dispatch must hear of it here to leave them out of `auto`.
    raise ImportError(f"triton {triton.__version__} is older than 3.6, the oldest these kernels are written for")

__all__ = ["sample_forward", "sample_backward", "philox_words", "launch_config", "launch_grid",
           "grad_out_layout"]

LOG2 = math.log(2.0)
LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
NORMALS_PER_CALL = 4  # one Philox call: the normals of one quad (four consecutive elements)

# ---- launch configuration (see docs/triton.md) ---------------------------------------------------
# A program handles a tile of BLOCK_B examples x BLOCK_D elements of each example, TILE elements
# in all: one quad per thread, so a thread draws its four normals with one Philox call per sample
# and no normal crosses threads (fewer elements per thread would repeat the quad's call in each
# thread that holds one of its elements; two quads per thread cost 80 and 125 registers in the
# forward and backward: docs/triton.md). One warp per program: the row sums of -log p are warp
# shuffles, nothing goes through shared memory.
NUM_WARPS = 1
TILE = NORMALS_PER_CALL * 32 * NUM_WARPS
MIN_BLOCK_D = 16
WORDS_BLOCK = 512
WORDS_NUM_WARPS = 4
MAX_GRID_X = 2**31 - 1  # CUDA's limits on a grid's x and y dimensions
MAX_GRID_Y = 65535
# What the kernels are written for, said at every launch: FMA contraction on (Triton >= 3.10
# turns it off by default; the float32 error budget in docs/triton.md assumes it).
COMPILE_OPTIONS = {"enable_fp_fusion": True}

# Fixed at import: triton.jit picks the interpreter when a kernel is decorated (dispatch reads it to
# know whether CPU tensors can run). Globals read inside kernels must be tl.constexpr.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
_INTERPRETED = tl.constexpr(INTERPRETED)
# expm1 on [-0.5, 0] by its Taylor series (Horner); beyond, exp(x) - 1 is accurate enough.
_EXPM1_SWITCH = tl.constexpr(0.25)  # |u| below which tanh(|u|) uses the series for expm1(-2|u|)
_LOG2 = tl.constexpr(LOG2)
_LN2 = tl.constexpr(LOG2)  # float32 kernels: ln 2 (rounded to fp32 by triton)
_M2_LOG2E = tl.constexpr(-2.0 / LOG2)  # -2 log2(e): exp(-2a) = 2^(a * _M2_LOG2E)
_TWO_PI_2M24 = tl.constexpr(2.0 * math.pi * 2.0**-24)  # exact power-of-two scaling of float64 2 pi
_F3 = tl.constexpr(0.16666666666666666)  # 1/3!
_F4 = tl.constexpr(0.041666666666666664)  # 1/4!
_F5 = tl.constexpr(0.008333333333333333)  # 1/5!
_F6 = tl.constexpr(0.001388888888888889)  # 1/6!
_F7 = tl.constexpr(0.0001984126984126984)  # 1/7!
_F8 = tl.constexpr(2.48015873015873e-05)  # 1/8!
_F9 = tl.constexpr(2.7557319223985893e-06)  # 1/9!
_F10 = tl.constexpr(2.755731922398589e-07)  # 1/10!
_F11 = tl.constexpr(2.505210838544172e-08)  # 1/11!
_F12 = tl.constexpr(2.08767569878681e-09)  # 1/12!
_F13 = tl.constexpr(1.6059043836821613e-10)  # 1/13!
_F14 = tl.constexpr(1.1470745597729725e-11)  # 1/14!


# ================================================================================================
# Device helpers
# ================================================================================================

@triton.jit
def _c(value: tl.constexpr, CT: tl.constexpr):
    """A scalar constant built directly in the compute type (not rounded through fp32)."""
    return tl.full([], value, CT)


@triton.jit
def _f64_from_bits(bits):
    """The float64 whose IEEE bit pattern is the integer `bits` (an int32/int64 scalar)."""
    return bits.to(tl.int64).to(tl.float64, bitcast=True)


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Salmon et al., SC'11) on uint32 blocks of one shape."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = tl.mul(c0, 0xD2511F53, sanitize_overflow=False)
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = tl.mul(c2, 0xCD9E8D57, sanitize_overflow=False)
        c0 = hi1 ^ c1 ^ k0
        c2 = hi0 ^ c3 ^ k1
        c1 = lo1
        c3 = lo0
        k0 = tl.add(k0, 0x9E3779B9, sanitize_overflow=False)
        k1 = tl.add(k1, 0xBB67AE85, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _philox_block(q, seed, sample_counter):
    """Words of quads `q` (int64 block) for one sample: key = (seed_lo, seed_hi),
    counter = (q_lo, q_hi, (offset+s)_lo, (offset+s)_hi); sample_counter = offset + s (int64).
    The key and the sample's counter words are scalars: the compiler keeps them (and the key
    schedule) in uniform registers, shared by the whole warp."""
    c0 = q.to(tl.uint32)
    c1 = (q >> 32).to(tl.uint32)
    c2 = sample_counter.to(tl.uint32)
    c3 = (sample_counter >> 32).to(tl.uint32)
    k0 = seed.to(tl.uint32)
    k1 = (seed >> 32).to(tl.uint32)
    return _philox4x32_10(c0, c1, c2, c3, k0, k1)


@triton.jit
def _box_muller(wa, wb, IS_FP64: tl.constexpr, CT: tl.constexpr):
    """(r cos, r sin) from two words: a = ((wa >> 8) + 1) / 2^24, b = (wb >> 8) / 2^24."""
    a = ((wa >> 8) + 1).to(tl.int32).to(CT) * 5.9604644775390625e-08
    j = (wb >> 8).to(tl.int32)
    if IS_FP64:
        radius = tl.sqrt(-2.0 * tl.log(a))
        angle = j.to(CT) * _c(_TWO_PI_2M24, CT)  # == (2 pi) * b, as the reference rounds it
        cos_v = tl.cos(angle)
        sin_v = tl.sin(angle)
    else:
        # The radius as the CUDA kernels compute it: -2 ln a by lg2.approx, and where its
        # absolute error would swamp a logarithm near 0 (a > 15/16) by a polynomial in the exact
        # c = 1 - a; at most 7e-7 absolute in the radius (docs/kernels.md).
        c = 1.0 - a
        radius = _approx(tl.where(c <= 0.0625, _neg2_log1m_near0(c), _approx(a, "lg2") * -1.3862943611198906),
                         "sqrt")
        # The angle: an exact reduction of the 24-bit fixed-point angle to a quadrant q and a
        # remainder theta in [-pi/4, pi/4), then Taylor polynomials (error < 2e-9 there). Not
        # sin/cos.approx: their error, up to 9.2e-7 in cos and sin, is scaled by the radius.
        jq = (j + 2097152) >> 22
        theta = (j - (jq << 22)).to(CT) * 3.7450702829239286e-07  # 2 pi / 2^24
        q = jq & 3
        t2 = theta * theta
        sin_t = theta + theta * t2 * (-0.16666666666666666 + t2 * (
            0.008333333333333333 + t2 * (-0.0001984126984126984 + t2 * 2.7557319223985893e-06)))
        cos_t = 1.0 + t2 * (-0.5 + t2 * (0.041666666666666664 + t2 * (
            -0.001388888888888889 + t2 * (2.48015873015873e-05 + t2 * -2.755731922398589e-07))))
        # quadrant q: (cos, sin)(theta + q pi/2) = swap (q odd) and negate (cos: q = 1, 2;
        # sin: q = 2, 3) the pair (cos_t, sin_t).
        odd = (q & 1) != 0
        cos_v = tl.where(odd, sin_t, cos_t)
        sin_v = tl.where(odd, cos_t, sin_t)
        cos_v = tl.where(((q + 1) & 2) != 0, -cos_v, cos_v)
        sin_v = tl.where((q & 2) != 0, -sin_v, sin_v)
    return radius * cos_v, radius * sin_v


@triton.jit
def _expm1_series(x, IS_FP64: tl.constexpr, CT: tl.constexpr):
    """expm1(x) for x in [-0.5, 0]: Taylor/Horner, degree 8 (fp32) or 14 (fp64)."""
    if IS_FP64:
        p = _c(_F14, CT)
        p = p * x + _c(_F13, CT)
        p = p * x + _c(_F12, CT)
        p = p * x + _c(_F11, CT)
        p = p * x + _c(_F10, CT)
        p = p * x + _c(_F9, CT)
        p = p * x + _c(_F8, CT)
    else:
        p = _c(_F8, CT)
    p = p * x + _c(_F7, CT)
    p = p * x + _c(_F6, CT)
    p = p * x + _c(_F5, CT)
    p = p * x + _c(_F4, CT)
    p = p * x + _c(_F3, CT)
    p = p * x + 0.5
    p = p * x + 1.0
    return p * x


@triton.jit
def _approx(x, OP: tl.constexpr):
    """One MUFU instruction of PTX's approximate float32 family (OP: "ex2", "lg2", "rcp" or
    "sqrt"), as the CUDA kernels use them (docs/kernels.md, "Device float maths", has their
    documented bounds; ftz flushes results below 2^-126 to zero, which changes nothing the op
    returns). The interpreter runs the exact tl function instead."""
    if _INTERPRETED:
        if OP == "ex2":
            y = tl.exp2(x)
        elif OP == "lg2":
            y = tl.log2(x)
        elif OP == "rcp":
            y = 1.0 / x
        else:
            y = tl.sqrt(x)
    else:
        if OP == "ex2":
            asm: tl.constexpr = "ex2.approx.ftz.f32 $0, $1;"
        elif OP == "lg2":
            asm: tl.constexpr = "lg2.approx.ftz.f32 $0, $1;"
        elif OP == "rcp":
            asm: tl.constexpr = "rcp.approx.ftz.f32 $0, $1;"
        else:
            asm: tl.constexpr = "sqrt.approx.ftz.f32 $0, $1;"
        y = tl.inline_asm_elementwise(asm, "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)
    return y


@triton.jit
def _log1p_unit_poly(x):
    """log(1 + x) for x in [0, 1] as x + x^2 q(x): core/fastmath.h's log1p_unit_poly (1.2 ulp)."""
    q = -0.0032271984964609146 * x + 0.01979079470038414
    q = q * x - 0.056882403790950775
    q = q * x + 0.10600826144218445
    q = q * x - 0.15308032929897308
    q = q * x + 0.1967889964580536
    q = q * x - 0.24955376982688904
    q = q * x + 0.3333020508289337
    q = q * x - 0.4999992251396179
    return (q * x) * x + x


@triton.jit
def _neg2_log1m_near0(c):
    """-2 log(1 - c) for 0 <= c <= 1/16: core/fastmath.h's neg2_log1m_near0 (1.2e-7 relative)."""
    q = 0.4570601284503937 * c + 0.49678531289100647
    q = q * c + 0.6667395234107971
    q = q * c + 0.9999994039535522
    q = q * c + 2.0
    return q * c


@triton.jit
def _tanh_parts(u, IS_FP64: tl.constexpr, CT: tl.constexpr):
    """(t = tanh(u), 1 - t^2, log(1 - t^2)) from one exp: with e = exp(-2|u|),
    t = sign(u) (1 - e) / (1 + e), 1 - t^2 = 4e / (1 + e)^2 (no cancellation) and
    log(1 - t^2) = 2 log 2 - 2|u| - 2 log(1 + e), finite for any finite u.

    float32: e = 2^q with q = -2|u| log2(e) (one MUFU.EX2), log(1 + e) by one MUFU.LG2; t has an
    absolute error ~1e-7 (relative error grows for |u| < 1e-3, which the float32 tolerance,
    relative to the output's scale, allows). float64: 1 - e comes from expm1's series below
    |u| = 0.25, so t stays accurate to a few ulp relative."""
    a = tl.abs(u)
    if IS_FP64:
        x = -2.0 * a
        e = tl.exp(x)
        small = a < _EXPM1_SWITCH
        one_minus_e = -tl.where(small, _expm1_series(tl.where(small, x, 0.0), IS_FP64, CT), e - 1.0)
        inv = 1.0 / (1.0 + e)
        log1m_t2 = 2.0 * (_c(_LOG2, CT) - a - tl.log(1.0 + e))
    else:
        q = a * _M2_LOG2E
        e = _approx(q, "ex2")
        one_plus_e = 1.0 + e
        one_minus_e = 1.0 - e
        inv = _approx(one_plus_e, "rcp")
        # 2 log 2 - 2|u| - 2 log(1 + e) = ln2 (2 + q - 2 log2(1 + e))
        log1m_t2 = _LN2 * (2.0 + q - 2.0 * _approx(one_plus_e, "lg2"))
    t = one_minus_e * inv  # tanh(|u|)
    t = tl.where(u < 0, -t, t)
    dtanh = 4.0 * e * inv * inv
    return t, dtanh, log1m_t2


@triton.jit
def _softplus_parts(rho, IS_FP64: tl.constexpr):
    """sigma = softplus(rho), log(sigma), sigmoid(rho), sigmoid(rho)/sigma: finite for all rho.
    Once per element; every sample of the element reuses them."""
    if IS_FP64:
        z = tl.exp(-tl.abs(rho))
        w = 1.0 + z
        wm1 = w - 1.0
        log1p_z = tl.where(wm1 == 0.0, z, tl.log(w) * (z / tl.where(wm1 == 0.0, 1.0, wm1)))
        sigma = tl.maximum(rho, 0.0) + log1p_z
        tail = rho < -20.0
        e_tail = tl.exp(tl.minimum(rho, -20.0))
        safe_sigma = tl.where(tail, 1.0, sigma)
        log_sigma = tl.where(tail, rho - 0.5 * e_tail, tl.log(safe_sigma))
        inv_w = 1.0 / w
        sigmoid = tl.where(rho >= 0, inv_w, z * inv_w)
        sig_over_sp = tl.where(tail, 1.0 - 0.5 * e_tail, sigmoid / safe_sigma)
    else:
        # The CUDA kernels' float path (core/elementwise.h rho_terms): z = exp(-|rho|) by one
        # ex2.approx, which is exp(rho) itself in the tail; log1p(z) by the polynomial, which
        # keeps sigma's relative accuracy where it is tiny.
        z = _approx(tl.abs(rho) * -1.4426950408889634, "ex2")
        sigma = tl.maximum(rho, 0.0) + _log1p_unit_poly(z)
        inv_w = _approx(1.0 + z, "rcp")
        sigmoid = tl.where(rho >= 0, inv_w, z * inv_w)
        tail = rho < -20.0
        safe_sigma = tl.where(sigma > 1.1754943508222875e-38, sigma, 1.1754943508222875e-38)
        log_sigma = tl.where(tail, rho - 0.5 * z, _approx(safe_sigma, "lg2") * _LN2)
        sig_over_sp = tl.where(tail, 1.0 - 0.5 * z, sigmoid * _approx(safe_sigma, "rcp"))
    return sigma, log_sigma, sigmoid, sig_over_sp


@triton.jit
def _tile_indices(pid, B, D, n_chunks, QUAD_ALIGNED: tl.constexpr, WIDE: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """Program `pid`'s tile: (c, rows, row_ok, mask, n, quads): its chunk c of each example, the
    example rows, the element mask, the flat element indices n = row * D + col and the Philox quads
    of `_sample_normals`.

    The tile's first row and column, hence rows and the offsets formed from them (grad_nlp's rows
    * stride), are int32, or int64 where WIDE (`wide_indices`: a launch whose padded rows, columns
    or grad_nlp offsets pass 2^31 - 1, which in int32 wrapped to negative offsets); n, quads and
    -log p's part offsets are int64 either way. int32 rows take fewer registers where a tile packs
    several examples (D <= 64: docs/triton.md). pid, pb and c are int32 on the 32-bit path (its
    grid is 1-D, below 2^31 programs) and int64 where WIDE (`_program_id`); the masks' compares
    stay int32, counting within the tile. A pid past the last tile (the 2-D grid's surplus) has
    rows past B: all masked."""
    IDX: tl.constexpr = tl.int64 if WIDE else tl.int32
    pb = pid // n_chunks
    c = pid - pb * n_chunks
    row0 = pb.to(IDX) * BLOCK_B
    col0 = c.to(IDX) * BLOCK_D
    rows = row0 + tl.arange(0, BLOCK_B)
    row_ok = tl.arange(0, BLOCK_B) < tl.minimum(B - row0, BLOCK_B).to(tl.int32)
    col_ok = tl.arange(0, BLOCK_D) < tl.minimum(D - col0, BLOCK_D).to(tl.int32)
    mask = row_ok[:, None] & col_ok[None, :]
    start = rows.to(tl.int64) * D + col0  # each row's first element in the tile
    n = start[:, None] + tl.arange(0, BLOCK_D)[None, :]
    if QUAD_ALIGNED:  # D % 4 == 0: the tile's BLOCK_D // 4 quads of each row are whole
        first = start >> 2  # each row's first quad in the tile
        quads = first[:, None] + tl.arange(0, BLOCK_D // 4)[None, :]
        # ... which the compiler infers only where it specialises D % 16 == 0. Told, it gives each
        # thread a whole quad in loads and stores too, as in the normals: 16-byte accesses and no
        # layout conversion in the sample loop, whatever D.
        n = tl.multiple_of(n, [1, 4])
        mask = tl.max_constancy(mask, [1, 4])
    else:  # each element's own quad
        quads = n >> 2
    return c, rows, row_ok, mask, n, quads


@triton.jit
def _program_id(WIDE: tl.constexpr):
    """This program's tile number: program_id(0) on a 1-D grid; where WIDE, the int64 number on
    `launch_grid`'s grid, which takes a second axis past CUDA's 2^31 - 1 programs on x."""
    if WIDE:
        pid = tl.program_id(1).to(tl.int64) * tl.num_programs(0) + tl.program_id(0)
    else:
        pid = tl.program_id(0)
    return pid


@triton.jit
def _load_tile(mean_ptr, std_ptr, x_ptr, seed_offset_ptr, B, D, n_chunks, eps_bits, lo_bits, hi_bits,
               QUAD_ALIGNED: tl.constexpr, WIDE: tl.constexpr, HAS_X: tl.constexpr,
               HAS_NOISE: tl.constexpr, IS_FP64: tl.constexpr, CT: tl.constexpr, BLOCK_B: tl.constexpr,
               BLOCK_D: tl.constexpr):
    """This program's tile of (examples x elements), its inputs, the per-element rho terms and the
    Philox quad indices of `_sample_normals`."""
    c, rows, row_ok, mask, n, quads = _tile_indices(_program_id(WIDE), B, D, n_chunks, QUAD_ALIGNED, WIDE,
                                                    BLOCK_B, BLOCK_D)
    eps = _f64_from_bits(eps_bits).to(CT)
    lo = _f64_from_bits(lo_bits).to(CT)
    hi = _f64_from_bits(hi_bits).to(CT)
    mu = tl.load(mean_ptr + n, mask=mask, other=0.0).to(CT)
    rho = tl.load(std_ptr + n, mask=mask, other=0.0).to(CT)
    sigma, log_sigma, sigmoid, sig_over_sp = _softplus_parts(rho, IS_FP64)
    if HAS_X:
        xv = tl.load(x_ptr + n, mask=mask, other=0.0).to(CT)
    else:
        xv = mu
    if HAS_NOISE:
        seed = tl.zeros([], dtype=tl.int64)
        offset = seed
    else:
        seed = tl.load(seed_offset_ptr)
        offset = tl.load(seed_offset_ptr + 1)
    return (c, rows, row_ok, mask, n, quads, eps, lo, hi, mu, sigma, log_sigma, sigmoid, sig_over_sp,
            xv, seed, offset)


@triton.jit
def _sample_normals(n, quads, seed, sample_counter, placeholder, QUAD_ALIGNED: tl.constexpr,
                    HAS_NOISE: tl.constexpr, IS_FP64: tl.constexpr, CT: tl.constexpr):
    """The normals of one sample (counter word offset + s) for the tile's elements `n`.

    Aligned quads: one Philox call per quad, Box-Muller on both word pairs, the four normals
    interleaved into elements 4q .. 4q+3. Otherwise one call per element (quads = n >> 2) that
    keeps the pair and the cos or sin of its lane n & 3: four times the Philox work. With noise
    the samples load r themselves and get `placeholder`."""
    if HAS_NOISE:
        r = placeholder
    else:
        w0, w1, w2, w3 = _philox_block(quads, seed, sample_counter)
        if QUAD_ALIGNED:
            z0, z1 = _box_muller(w0, w1, IS_FP64, CT)
            z2, z3 = _box_muller(w2, w3, IS_FP64, CT)
            r = tl.interleave(tl.interleave(z0, z2), tl.interleave(z1, z3))  # z0 z1 z2 z3 per quad
        else:
            lane = n & 3
            second = lane >= 2
            r_cos, r_sin = _box_muller(tl.where(second, w2, w0), tl.where(second, w3, w1), IS_FP64, CT)
            r = tl.where((lane & 1) != 0, r_sin, r_cos)
    return r


@triton.jit
def _clamp(v, lo, hi):
    """torch.clamp: NaN stays NaN (PTX min/max would return the bound)."""
    return tl.minimum(tl.maximum(v, lo, propagate_nan=tl.PropagateNan.ALL), hi,
                      propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _forward_sample(r, out_s, part_s, noise_s, mask, row_ok, cadd, mu, sigma, log_sigma, xv, eps, lo, hi,
                    HAS_X: tl.constexpr, HAS_NOISE: tl.constexpr, IS_FP64: tl.constexpr,
                    CT: tl.constexpr):
    """One sample of the tile: store delta / x_adv at out_s and each example row's partial sum of
    -log p at part_s (pointers already advanced to this sample); the host's `sum(-1)` adds the
    chunks of a row."""
    if HAS_NOISE:
        r = tl.load(noise_s, mask=mask, other=0.0).to(CT)
    u = mu + sigma * r
    t, dtanh, log1m_t2 = _tanh_parts(u, IS_FP64, CT)
    delta = eps * t
    if HAS_X:
        o = _clamp(xv + delta, lo, hi)
    else:
        o = delta
    tl.store(out_s, o.to(out_s.dtype.element_ty), mask=mask)
    per_elem = tl.where(mask, 0.5 * r * r + log_sigma + log1m_t2, 0.0)
    tl.store(part_s, tl.sum(per_elem, axis=1) + cadd, mask=row_ok)


@triton.jit(do_not_specialize=["eps_bits", "lo_bits", "hi_bits", "const_bits"])
def _forward_kernel(mean_ptr, std_ptr, x_ptr, noise_ptr, seed_offset_ptr, out_ptr, part_ptr,
                    B, D, N, num_samples, n_chunks, eps_bits, lo_bits, hi_bits, const_bits,
                    QUAD_ALIGNED: tl.constexpr, WIDE: tl.constexpr, HAS_X: tl.constexpr,
                    HAS_NOISE: tl.constexpr, IS_FP64: tl.constexpr, CT: tl.constexpr, BLOCK_B: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    (c, rows, row_ok, mask, n, quads, eps, lo, hi, mu, sigma, log_sigma, sigmoid, sig_over_sp, xv, seed,
     offset) = _load_tile(mean_ptr, std_ptr, x_ptr, seed_offset_ptr, B, D, n_chunks, eps_bits, lo_bits,
                          hi_bits, QUAD_ALIGNED, WIDE, HAS_X, HAS_NOISE, IS_FP64, CT, BLOCK_B, BLOCK_D)
    cadd = tl.where(c == 0, _f64_from_bits(const_bits), 0.0).to(CT)  # chunk 0 adds the constant
    part_s = part_ptr + (rows.to(tl.int64) * n_chunks + c)  # part c of each row, advanced per sample
    part_step = B.to(tl.int64) * n_chunks
    out_s = out_ptr + n  # pointers of sample s, advanced by one sample at a time
    noise_s = noise_ptr + n

    for s in range(0, num_samples):  # one Philox call per quad and sample
        r = _sample_normals(n, quads, seed, offset + s, mu, QUAD_ALIGNED, HAS_NOISE, IS_FP64, CT)
        _forward_sample(r, out_s, part_s, noise_s, mask, row_ok, cadd, mu, sigma, log_sigma, xv, eps, lo,
                        hi, HAS_X, HAS_NOISE, IS_FP64, CT)
        out_s += N
        noise_s += N
        part_s += part_step


@triton.jit
def _backward_sample(r, gout_s, gnlp_s, noise_s, mask, row_ok, mu, sigma, xv, g_pre, eps, lo, hi,
                     acc_du, acc_dur, acc_gx, acc_ge,
                     GOUT: tl.constexpr, HAS_GNLP: tl.constexpr, HAS_X: tl.constexpr,
                     WANT_GX: tl.constexpr, HAS_NOISE: tl.constexpr, IS_FP64: tl.constexpr,
                     CT: tl.constexpr):
    """Add one sample to the gradient accumulators (pointers advanced to this sample). GOUT says
    how grad_out is laid out (see `_backward_kernel`); g_pre is its value when it does not depend
    on the sample. WANT_GX: x's gradient is accumulated (x, when given, masks g_d either way)."""
    if HAS_NOISE:
        r = tl.load(noise_s, mask=mask, other=0.0).to(CT)
    u = mu + sigma * r
    t, dtanh, log1m_t2 = _tanh_parts(u, IS_FP64, CT)
    d_u = tl.zeros_like(u)
    if GOUT != 0:
        if GOUT == 1:
            g_d = tl.load(gout_s, mask=mask, other=0.0).to(CT)
        else:
            g_d = g_pre
        if HAS_X:
            unclamped = xv + eps * t
            g_d = tl.where((unclamped >= lo) & (unclamped <= hi), g_d, 0.0)
            if WANT_GX:
                acc_gx += g_d
        d_u = g_d * (eps * dtanh)
    if HAS_GNLP:
        g_e = tl.load(gnlp_s, mask=row_ok, other=0.0).to(CT)
        d_u = d_u - 2.0 * g_e[:, None] * t
        acc_ge += g_e
    acc_du += d_u
    acc_dur += d_u * r
    return acc_du, acc_dur, acc_gx, acc_ge


@triton.jit(do_not_specialize=["eps_bits", "lo_bits", "hi_bits"])
def _backward_kernel(gout_ptr, gnlp_ptr, mean_ptr, std_ptr, x_ptr, noise_ptr, seed_offset_ptr,
                     gmean_ptr, gstd_ptr, gx_ptr,
                     B, D, N, num_samples, n_chunks, eps_bits, lo_bits, hi_bits, gnlp_sample_stride,
                     gnlp_example_stride,
                     QUAD_ALIGNED: tl.constexpr, WIDE: tl.constexpr, GOUT: tl.constexpr,
                     HAS_GNLP: tl.constexpr, HAS_X: tl.constexpr, WANT_GX: tl.constexpr, HAS_NOISE: tl.constexpr,
                     IS_FP64: tl.constexpr, CT: tl.constexpr, BLOCK_B: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """GOUT: 0 no grad_out (zero), 1 contiguous (k, N), 2 expanded over k (one value per element,
    strides (0, contiguous)), 3 one value for everything (all strides 0, e.g. from delta.sum()).
    grad_nlp (k, B) is read with its own strides."""
    (c, rows, row_ok, mask, n, quads, eps, lo, hi, mu, sigma, log_sigma, sigmoid, sig_over_sp, xv, seed,
     offset) = _load_tile(mean_ptr, std_ptr, x_ptr, seed_offset_ptr, B, D, n_chunks, eps_bits, lo_bits,
                          hi_bits, QUAD_ALIGNED, WIDE, HAS_X, HAS_NOISE, IS_FP64, CT, BLOCK_B, BLOCK_D)
    if GOUT == 2:
        g_pre = tl.load(gout_ptr + n, mask=mask, other=0.0).to(CT)
    elif GOUT == 3:
        g_pre = tl.zeros_like(mu) + tl.load(gout_ptr).to(CT)
    else:
        g_pre = mu
    gout_s = gout_ptr + n  # pointers of sample s, advanced by one sample at a time
    noise_s = noise_ptr + n
    gnlp_s = gnlp_ptr + rows * gnlp_example_stride
    acc_du = tl.zeros([BLOCK_B, BLOCK_D], dtype=CT)
    acc_dur = tl.zeros([BLOCK_B, BLOCK_D], dtype=CT)
    acc_gx = tl.zeros([BLOCK_B, BLOCK_D], dtype=CT)
    acc_ge = tl.zeros([BLOCK_B], dtype=CT)
    for s in range(0, num_samples):  # one Philox call per quad and sample
        r = _sample_normals(n, quads, seed, offset + s, mu, QUAD_ALIGNED, HAS_NOISE, IS_FP64, CT)
        acc_du, acc_dur, acc_gx, acc_ge = _backward_sample(
            r, gout_s, gnlp_s, noise_s, mask, row_ok, mu, sigma, xv, g_pre, eps, lo, hi,
            acc_du, acc_dur, acc_gx, acc_ge, GOUT, HAS_GNLP, HAS_X, WANT_GX, HAS_NOISE, IS_FP64, CT)
        gout_s += N
        noise_s += N
        gnlp_s += gnlp_sample_stride

    grad_std = sigmoid * acc_dur + sig_over_sp * acc_ge[:, None]
    tl.store(gmean_ptr + n, acc_du.to(gmean_ptr.dtype.element_ty), mask=mask)
    tl.store(gstd_ptr + n, grad_std.to(gstd_ptr.dtype.element_ty), mask=mask)
    if WANT_GX:
        tl.store(gx_ptr + n, acc_gx.to(gx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _words_indices(pid_q, pid_s, s0, n_quads, BLOCK: tl.constexpr):
    """Program (pid_q, pid_s)'s sample s, quads q, their mask and the index of their first words in
    the (k, n_quads, 4) output. s is int64: s0 below 2^31 is passed as int32, and s0 + pid_s may
    pass 2^31 (more than 2^31 samples)."""
    s = s0 + pid_s.to(tl.int64)
    q = pid_q.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return s, q, q < n_quads, (s * n_quads + q) * 4


@triton.jit
def _philox_words_kernel(seed_offset_ptr, out_ptr, n_quads, s0, BLOCK: tl.constexpr):
    s, q, mask, at = _words_indices(tl.program_id(0), tl.program_id(1), s0, n_quads, BLOCK)
    seed = tl.load(seed_offset_ptr)
    offset = tl.load(seed_offset_ptr + 1)
    w0, w1, w2, w3 = _philox_block(q, seed, offset + s)
    base = out_ptr + at
    tl.store(base, w0.to(tl.int64), mask=mask)
    tl.store(base + 1, w1.to(tl.int64), mask=mask)
    tl.store(base + 2, w2.to(tl.int64), mask=mask)
    tl.store(base + 3, w3.to(tl.int64), mask=mask)


# ================================================================================================
# Host side
# ================================================================================================

def _next_pow2(v: int) -> int:
    return 1 << max(0, (v - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    """ceil(a / b) for the host's launch arithmetic: triton.cdiv is a ConstexprFunction from triton
    3.9 on, about 2 us a call from Python, and an op call made several."""
    return -(-a // b)


@functools.lru_cache(maxsize=1024)
def launch_config(batch: int, per_example: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_B, BLOCK_D, n_chunks, n_programs, num_warps) for B examples of D elements (N > 0).

    Programs tile (examples x elements); n_chunks = ceil(D / BLOCK_D) partial sums per
    (sample, example) are reduced after the forward kernel.
    """
    block_d = min(TILE, max(MIN_BLOCK_D, _next_pow2(per_example)))
    block_b = max(1, min(TILE // block_d, _next_pow2(batch)))
    n_chunks = _cdiv(per_example, block_d)
    n_programs = _cdiv(batch, block_b) * n_chunks
    return block_b, block_d, n_chunks, n_programs, NUM_WARPS


def _bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


@functools.lru_cache(maxsize=256)
def _scalar_bits(epsilon: float, lo: float, hi: float,
                 per_example: int) -> tuple[int, int, int, int]:
    constant = (LOG_SQRT_2PI + math.log(epsilon)) * per_example  # as reference.sample_forward
    return _bits(epsilon), _bits(lo), _bits(hi), _bits(constant)


def _compute(dtype: torch.dtype):
    if dtype == torch.float64:
        return torch.float64, True, tl.float64
    return torch.float32, False, tl.float32


def _device_guard(tensor: torch.Tensor):
    if tensor.is_cuda and tensor.device.index != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def sample_loop_trips(num_samples: int) -> int:
    """Trips of the kernels' sample loop: one per sample (one Philox call per quad each), no tail."""
    return num_samples


INT32_MAX = 2**31 - 1


def wide_indices(batch: int, per_example: int, example_stride: int = 0) -> bool:
    """Whether a launch needs the kernels' 64-bit tile indices (WIDE in `_tile_indices`): whether
    an int32 index of the 32-bit path would pass 2^31 - 1. That path forms the rows and columns of
    every tile, padding included (the last tile's pb * BLOCK_B + BLOCK_B - 1 and the last chunk's
    c * BLOCK_D + BLOCK_D - 1), and the backward's grad_nlp offsets rows * example_stride (0
    without grad_nlp); the element indices n = row * D + col, the quads and -log p's part offsets
    are int64 on both paths, and per-sample steps are pointer increments. Also where the programs
    pass MAX_GRID_X (B >= 2^31 at D = 128, for one): `launch_grid` then makes the grid 2-D, whose
    program numbers only the 64-bit path forms (`_program_id`)."""
    block_b, block_d, n_chunks, n_programs, _ = launch_config(batch, per_example)
    last_row = _cdiv(batch, block_b) * block_b - 1
    last_col = n_chunks * block_d - 1
    return max(last_row, last_col, last_row * example_stride) > INT32_MAX or n_programs > MAX_GRID_X


def launch_grid(batch: int, per_example: int) -> tuple[int, int]:
    """The tile programs' grid: (n_programs, 1) up to CUDA's cap of MAX_GRID_X programs on x; past
    it (B > 2^34 - 8 at D <= 16) rows of at most MAX_GRID_X programs, which only the WIDE
    kernels number (`_program_id`; `wide_indices` picks them there), with fewer surplus programs
    than rows, all masked out."""
    n_programs = launch_config(batch, per_example)[3]
    rows = _cdiv(n_programs, MAX_GRID_X)
    if rows > MAX_GRID_Y:  # about 2^47 programs of 8 elements or more: past any GPU's memory
        raise ValueError(f"B = {batch} examples of D = {per_example} elements take {n_programs} tile programs, "
                         f"past the triton backend's grid of {MAX_GRID_Y} x {MAX_GRID_X}")
    return _cdiv(n_programs, rows), rows


def sample_constexprs(*, per_example: int, batch: int = 1, example_stride: int = 0) -> dict:
    """The kernels' compile-time parameters of a launch besides dtypes, optional inputs and the
    tile: QUAD_ALIGNED = D % 4 == 0, whether a tile's quads are whole (one Philox call per quad)
    or may straddle rows (one call per element), and WIDE = `wide_indices(batch, per_example,
    example_stride)` (grad_nlp's example stride, for the backward). Keyword-only: it does not
    depend on k."""
    return {"QUAD_ALIGNED": per_example % NORMALS_PER_CALL == 0,
            "WIDE": wide_indices(batch, per_example, example_stride)}


def _contiguous(*tensors):
    """The kernels index rows flat and read seed_offset as two adjacent words: a strided view (the
    public op passes none, a direct call of the custom op or a vmap over it may) is copied first;
    free for contiguous tensors."""
    return tuple(None if t is None else t.contiguous() for t in tensors)


def sample_forward(mean, std_param, x, noise, seed_offset, num_samples, epsilon, lo, hi):
    """Triton version of `reference.sample_forward`."""
    mean, std_param, x, noise, seed_offset = _contiguous(mean, std_param, x, noise, seed_offset)
    k = num_samples
    batch = mean.shape[0]
    numel = mean.numel()
    per_example = numel // batch if batch else 0
    ctype, is_fp64, ct = _compute(mean.dtype)
    out = torch.empty((k, *mean.shape), dtype=mean.dtype, device=mean.device)
    if numel == 0 or k == 0:
        return out, torch.zeros((k, batch), dtype=ctype, device=mean.device)
    block_b, block_d, n_chunks, _, warps = launch_config(batch, per_example)
    eps_bits, lo_bits, hi_bits, const_bits = _scalar_bits(epsilon, lo, hi, per_example)
    part = torch.empty((k, batch, n_chunks) if n_chunks > 1 else (k, batch), dtype=ctype,
                       device=mean.device)
    with _device_guard(mean):
        _forward_kernel[launch_grid(batch, per_example)](
            mean, std_param, mean if x is None else x, mean if noise is None else noise,
            seed_offset, out, part, batch, per_example, numel, sample_loop_trips(k), n_chunks,
            eps_bits, lo_bits, hi_bits, const_bits,
            **sample_constexprs(per_example=per_example, batch=batch),
            HAS_X=x is not None, HAS_NOISE=noise is not None, IS_FP64=is_fp64, CT=ct,
            BLOCK_B=block_b, BLOCK_D=block_d, num_warps=warps, **COMPILE_OPTIONS)
    return out, (part.sum(-1) if n_chunks > 1 else part)


GRAD_ZERO, GRAD_FULL, GRAD_PER_ELEMENT, GRAD_SCALAR = range(4)


def grad_out_layout(grad_out, num_samples: int, shape) -> tuple[int, "torch.Tensor | None"]:
    """How the kernels read grad_out, without a k x N copy: absent (zero), contiguous, expanded
    over k (strides (0, contiguous...)), or one value broadcast everywhere (all strides 0, as
    delta.sum() gives); anything else is made contiguous."""
    if grad_out is None:
        return GRAD_ZERO, None
    if grad_out.is_contiguous():
        return GRAD_FULL, grad_out
    if all(stride == 0 for stride in grad_out.stride()):
        return GRAD_SCALAR, grad_out
    if grad_out.stride(0) == 0 and grad_out[0].is_contiguous():
        return GRAD_PER_ELEMENT, grad_out
    return GRAD_FULL, grad_out.contiguous()


def sample_backward(grad_out, grad_nlp, mean, std_param, x, noise, seed_offset, num_samples,
                    epsilon, lo, hi, need_grad_x=True):
    """Triton version of `reference.sample_backward`: (grad_mean, grad_std_param, grad_x|None).
    A None gradient is zero; grad_out may be expanded (`grad_out_layout`), grad_nlp any strides."""
    mean, std_param, x, noise, seed_offset = _contiguous(mean, std_param, x, noise, seed_offset)
    k = num_samples
    batch = mean.shape[0]
    numel = mean.numel()
    per_example = numel // batch if batch else 0
    _, is_fp64, ct = _compute(mean.dtype)
    grad_mean = torch.empty_like(mean)
    grad_std = torch.empty_like(std_param)
    grad_x = None if x is None or not need_grad_x else torch.empty_like(x)
    if numel == 0:
        return grad_mean, grad_std, grad_x
    gout_mode, grad_out = grad_out_layout(grad_out, k, mean.shape)
    block_b, block_d, n_chunks, _, warps = launch_config(batch, per_example)
    eps_bits, lo_bits, hi_bits, _ = _scalar_bits(epsilon, lo, hi, per_example)
    gnlp_strides = (0, 0) if grad_nlp is None else grad_nlp.stride()
    with _device_guard(mean):
        _backward_kernel[launch_grid(batch, per_example)](
            mean if grad_out is None else grad_out, mean if grad_nlp is None else grad_nlp,
            mean, std_param, mean if x is None else x, mean if noise is None else noise, seed_offset,
            grad_mean, grad_std, grad_mean if grad_x is None else grad_x,
            batch, per_example, numel, sample_loop_trips(k), n_chunks, eps_bits, lo_bits, hi_bits,
            *gnlp_strides,
            **sample_constexprs(per_example=per_example, batch=batch, example_stride=gnlp_strides[1]),
            GOUT=gout_mode, HAS_GNLP=grad_nlp is not None,
            HAS_X=x is not None, WANT_GX=grad_x is not None, HAS_NOISE=noise is not None, IS_FP64=is_fp64,
            CT=ct,
            BLOCK_B=block_b, BLOCK_D=block_d, num_warps=warps, **COMPILE_OPTIONS)
    return grad_mean, grad_std, grad_x


def philox_words(seed_offset, numel, num_samples):
    """Raw Philox words, int64 of shape (k, ceil(numel/4), 4), as `reference.philox_words`."""
    (seed_offset,) = _contiguous(seed_offset)
    n_quads = _cdiv(numel, NORMALS_PER_CALL)
    out = torch.empty((num_samples, n_quads, 4), dtype=torch.int64, device=seed_offset.device)
    if num_samples == 0 or n_quads == 0:
        return out
    with _device_guard(seed_offset):
        for s0 in range(0, num_samples, MAX_GRID_Y):  # the samples are the grid's y axis
            _philox_words_kernel[(_cdiv(n_quads, WORDS_BLOCK), min(MAX_GRID_Y, num_samples - s0))](
                seed_offset, out, n_quads, s0, BLOCK=WORDS_BLOCK, num_warps=WORDS_NUM_WARPS)
    return out
