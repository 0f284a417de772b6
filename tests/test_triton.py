"""Triton-specific tests of adt_fast.ops.triton_kernels, run on CPU under TRITON_INTERPRET=1.

Triton picks the interpreter when a kernel is decorated, so this module sets TRITON_INTERPRET=1
before anything here imports triton, and loads a private, interpreted copy of the kernel module:
`adt_fast.ops.triton_kernels` itself (compiled mode on a GPU machine) is left untouched, and the
variable is restored once this module is imported (the tests set it again while they run), so
other test modules see the environment they were started with. Shapes stay small: the
interpreter is slow. The public-op tests of every backend live in tests/test_ops.py.
"""

import os

_PREVIOUS_INTERPRET = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import importlib.util  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

triton = pytest.importorskip("triton", minversion="3.6")
tl = pytest.importorskip("triton.language")

import adt_fast.ops  # noqa: E402
from adt_fast.ops import reference  # noqa: E402


def _load_interpreted_kernels():
    path = os.path.join(os.path.dirname(adt_fast.ops.__file__), "triton_kernels.py")
    spec = importlib.util.spec_from_file_location("adt_fast.ops._triton_kernels_interpreted", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert type(module._forward_kernel).__name__ == "InterpretedFunction"
    return module


tk = _load_interpreted_kernels()


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


EPS = 8 / 255
MASK64 = (1 << 64) - 1


def _seed_offset(seed, offset):
    to_signed = lambda v: v - (1 << 64) if v >= (1 << 63) else v  # noqa: E731
    return torch.tensor([to_signed(seed & MASK64), to_signed(offset & MASK64)], dtype=torch.int64)


def _assert_close(actual, expected, rtol, what=""):
    """Elementwise rtol plus an absolute floor of rtol times the tensor's scale."""
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), what
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol,
                               atol=rtol * max(scale, 1e-300), msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------------------------------------
# Philox: raw words, known answers, normals
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, offset, numel, k", [
    (0, 0, 1, 1),
    (0x123456789ABCDEF0, 42, 37, 9),
    ((1 << 64) - 1, (1 << 32) - 2, 19, 12),  # offset + s carries into the high counter word
    (2**62 + 12345, 2**61 + 3, 600, 5),
    (5, 6, 4 * tk.WORDS_BLOCK + 12, 2),  # quads over two programs
])
def test_philox_words_bit_identical(seed, offset, numel, k):
    words = tk.philox_words(_seed_offset(seed, offset), numel, k)
    expected = reference.philox_words(seed, offset, numel, k)
    assert words.dtype == torch.int64 and words.shape == (k, math.ceil(numel / 4), 4)
    assert torch.equal(words, expected)


def test_philox_words_take_the_samples_in_launches_of_at_most_the_grid_limit(monkeypatch):
    """The samples are the words kernel's grid y axis, which CUDA caps at 65535: more samples
    take several launches (here a cap of 2, so 5 samples take 3)."""
    monkeypatch.setattr(tk, "MAX_GRID_Y", 2)
    words = tk.philox_words(_seed_offset(11, 2**33 - 1), 9, 5)
    assert torch.equal(words, reference.philox_words(11, 2**33 - 1, 9, 5))


def test_philox_words_empty():
    assert tk.philox_words(_seed_offset(1, 2), 0, 5).shape == (5, 0, 4)
    assert tk.philox_words(_seed_offset(1, 2), 7, 0).shape == (0, 2, 4)


@triton.jit
def _kat_kernel(counter_ptr, key_ptr, out_ptr):
    i = tl.arange(0, 4)
    c0 = tl.load(counter_ptr + i * 4 + 0).to(tl.uint32)
    c1 = tl.load(counter_ptr + i * 4 + 1).to(tl.uint32)
    c2 = tl.load(counter_ptr + i * 4 + 2).to(tl.uint32)
    c3 = tl.load(counter_ptr + i * 4 + 3).to(tl.uint32)
    k0 = tl.load(key_ptr + i * 2 + 0).to(tl.uint32)
    k1 = tl.load(key_ptr + i * 2 + 1).to(tl.uint32)
    w0, w1, w2, w3 = tk._philox4x32_10(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + i * 4 + 0, w0.to(tl.int64))
    tl.store(out_ptr + i * 4 + 1, w1.to(tl.int64))
    tl.store(out_ptr + i * 4 + 2, w2.to(tl.int64))
    tl.store(out_ptr + i * 4 + 3, w3.to(tl.int64))


def test_philox_known_answers():
    """The three Random123 known-answer vectors (shared/reference/philox-kat.md)."""
    rows = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    rows.append(rows[0])  # pad to a power-of-two block
    counters = torch.tensor([r[0] for r in rows], dtype=torch.int64)
    keys = torch.tensor([r[1] for r in rows], dtype=torch.int64)
    out = torch.zeros(4, 4, dtype=torch.int64)
    _kat_kernel[(1,)](counters, keys, out)
    assert out.tolist() == [list(r[2]) for r in rows]


@triton.jit
def _normals_kernel(words_ptr, out_ptr, numel, IS_FP64: tl.constexpr, CT: tl.constexpr,
                    BLOCK: tl.constexpr):
    n = tl.arange(0, BLOCK)
    mask = n < numel
    w0 = tl.load(words_ptr + n * 4 + 0, mask=mask, other=0).to(tl.uint32)
    w1 = tl.load(words_ptr + n * 4 + 1, mask=mask, other=0).to(tl.uint32)
    w2 = tl.load(words_ptr + n * 4 + 2, mask=mask, other=0).to(tl.uint32)
    w3 = tl.load(words_ptr + n * 4 + 3, mask=mask, other=0).to(tl.uint32)
    r0, r1 = tk._box_muller(w0, w1, IS_FP64, CT)
    r2, r3 = tk._box_muller(w2, w3, IS_FP64, CT)
    tl.store(out_ptr + n * 4 + 0, r0, mask=mask)
    tl.store(out_ptr + n * 4 + 1, r1, mask=mask)
    tl.store(out_ptr + n * 4 + 2, r2, mask=mask)
    tl.store(out_ptr + n * 4 + 3, r3, mask=mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_box_muller_matches_reference(dtype):
    words = reference.philox_words(987654321, 5, 4000, 1)[0]  # 1000 quads of sample 0
    # Edge words: radius uniform a = 1 and a = 2^-24; angles 0, pi/2, pi, just below 2 pi, ...
    edge = [0xFFFFFFFF, 0x00000000, 0x3FFFFFFF, 0x40000000, 0x7FFFFFFF, 0x80000000, 0xBFFFFF00,
            0xC0000000, 0xFFFFFF00, 0x1FFFFF00, 0x20000000, 0xDFFFFF00]
    edge_words = torch.tensor([[a, b, b, a] for a in edge[:2] for b in edge], dtype=torch.int64)
    words = torch.cat([words, edge_words]).contiguous()
    numel = words.shape[0]
    out = torch.zeros(numel, 4, dtype=dtype)
    is_fp64 = dtype == torch.float64
    _normals_kernel[(1,)](words, out, numel, IS_FP64=is_fp64,
                          CT=tl.float64 if is_fp64 else tl.float32, BLOCK=2048)
    expected = reference.words_to_normals(words, torch.float64)
    err = (out.double() - expected).abs()
    if is_fp64:
        assert err.max() <= 1e-14 * expected.abs().max()
    else:  # a few float32 ulp of max(|r|, 1)
        assert (err <= 4 * 2.0**-23 * expected.abs().clamp(min=1.0)).all(), err.max()


@triton.jit
def _tile_normals_kernel(mean_ptr, seed_offset_ptr, out_ptr, B, D, N, num_samples, n_chunks, bits,
                         QUAD_ALIGNED: tl.constexpr, WIDE: tl.constexpr, IS_FP64: tl.constexpr,
                         CT: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    """The normals r[s, n] exactly as the op's kernels draw them for their tiles."""
    tile = tk._load_tile(mean_ptr, mean_ptr, mean_ptr, seed_offset_ptr, B, D, n_chunks, bits, bits, bits,
                         QUAD_ALIGNED, WIDE, False, False, IS_FP64, CT, BLOCK_B, BLOCK_D)
    mask, n, quads, mu, seed, offset = tile[3], tile[4], tile[5], tile[9], tile[15], tile[16]
    for s in range(0, num_samples):
        r = tk._sample_normals(n, quads, seed, offset + s, mu, QUAD_ALIGNED, False, IS_FP64, CT)
        tl.store(out_ptr + s * N + n, r, mask=mask)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", [
    (3, 8),     # aligned: two quads per row, rows packed in one tile
    (2, 300),   # aligned, three chunks, the last one masked
    (5, 12),    # aligned, masked rows and columns
    (3, 7),     # D % 4 != 0: quads straddle rows (elements 4..7 are row 0's 4..6 and row 1's 0)
    (4, 9),
    (2, 301),   # D % 4 != 0 over three chunks: a quad straddles two rows and two programs
])
def test_tile_normals_follow_the_quad_stream(shape, dtype):
    """Element n of sample s takes lane n mod 4 of the Philox call for quad n // 4 and counter word
    offset + s (reference.philox_normals), on the aligned path (one call per quad, the four
    normals interleaved) and on the per-element fallback, which must agree with it for any D, with
    32-bit and with 64-bit tile indices (WIDE, which only sizes past 2^31 launch)."""
    batch, d = shape
    k, seed, offset = 3, 0xDEADBEEF12345678, (1 << 32) - 2  # offset + s carries
    block_b, block_d, n_chunks, n_programs, warps = tk.launch_config(batch, d)
    expected = reference.philox_normals(seed, offset, batch * d, k, torch.float64)
    is_fp64 = dtype == torch.float64
    for aligned in sorted({False, tk.sample_constexprs(per_example=d)["QUAD_ALIGNED"]}):
        for wide in (False, True):
            out = torch.zeros(k, batch * d, dtype=dtype)
            _tile_normals_kernel[(n_programs,)](
                torch.zeros(shape, dtype=dtype), _seed_offset(seed, offset), out, batch, d, batch * d, k,
                n_chunks, 0, QUAD_ALIGNED=aligned, WIDE=wide, IS_FP64=is_fp64,
                CT=tl.float64 if is_fp64 else tl.float32, BLOCK_B=block_b, BLOCK_D=block_d, num_warps=warps)
            err = (out.double() - expected).abs()
            bound = 1e-14 if is_fp64 else 4 * 2.0**-23  # as test_box_muller_matches_reference
            assert (err <= bound * expected.abs().clamp(min=1.0)).all(), (aligned, wide, err.max())


@triton.jit
def _tile_indices_kernel(pid, B, D, n_chunks, ge_stride, out_ptr, QUAD_ALIGNED: tl.constexpr,
                         WIDE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
                         QUADS_D: tl.constexpr):
    """The indices `_tile_indices` gives program `pid` (passed in: no grid of that size is
    launched), and the backward's grad_nlp offsets rows * example stride, stored as int64."""
    c, rows, row_ok, mask, n, quads = tk._tile_indices(pid, B, D, n_chunks, QUAD_ALIGNED, WIDE, BLOCK_B,
                                                       BLOCK_D)
    i = tl.arange(0, BLOCK_B)
    tile = i[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    tl.store(out_ptr + tile, n)
    tl.store(out_ptr + BLOCK_B * BLOCK_D + tile, mask.to(tl.int64))
    tl.store(out_ptr + 2 * BLOCK_B * BLOCK_D + i[:, None] * QUADS_D + tl.arange(0, QUADS_D)[None, :], quads)
    tl.store(out_ptr + 3 * BLOCK_B * BLOCK_D + i, rows * ge_stride)


@pytest.mark.parametrize("batch, d, ge_stride, wide", [
    (5, 12, 3, False),            # small, for the arithmetic itself (32-bit rows and columns)
    (2**28, 12, 7, False),        # B D past 2^31 with 32-bit rows: the element indices are int64
    (2**31 + 5, 3, 1, True),      # rows past 2^31 (the last program's pb * BLOCK_B)
    (2, 2**31 + 12, 1, True),     # columns past 2^31 (the last chunk's c * BLOCK_D), aligned quads
    (2**28, 1, 16, True),         # rows below 2^31, but grad_nlp (k = 16, transposed) read past 2^31
    (2**35, 4, 1, True),          # program numbers past 2^31 (`launch_grid`'s second axis)
])
def test_tile_indices_are_64_bit(batch, d, ge_stride, wide):
    """The element, quad and grad_nlp offsets of the last program stay exact where B, D or B times
    grad_nlp's example stride pass 2^31 (sizes the op takes: a GPU holds such tensors), with the
    index width the launch picks (WIDE); in int32 they wrapped to negative offsets (mutant: WIDE
    off, or rows and columns from int32 products)."""
    block_b, block_d, n_chunks, n_programs, _ = tk.launch_config(batch, d)
    constexprs = tk.sample_constexprs(per_example=d, batch=batch, example_stride=ge_stride)
    assert constexprs["WIDE"] == wide
    aligned = constexprs["QUAD_ALIGNED"]
    quads_d = block_d // 4 if aligned else block_d
    pid = n_programs - 1
    pb, c = divmod(pid, n_chunks)
    rows = [pb * block_b + i for i in range(block_b)]
    cols = [c * block_d + j for j in range(block_d)]
    n = [[r * d + col for col in cols] for r in rows]
    mask = [[int(r < batch and col < d) for col in cols] for r in rows]
    quads = ([[(r * d + c * block_d) // 4 + j for j in range(quads_d)] for r in rows] if aligned
             else [[v >> 2 for v in row] for row in n])
    out = torch.zeros(3 * block_b * block_d + block_b, dtype=torch.int64)
    _tile_indices_kernel[(1,)](pid, batch, d, n_chunks, ge_stride, out, **constexprs, BLOCK_B=block_b,
                               BLOCK_D=block_d, QUADS_D=quads_d)
    size = block_b * block_d
    assert out[:size].view(block_b, block_d).tolist() == n
    assert out[size:2 * size].view(block_b, block_d).tolist() == mask
    assert out[2 * size:2 * size + block_b * quads_d].view(block_b, quads_d).tolist() == quads
    assert out[3 * size:].tolist() == [r * ge_stride for r in rows]


@triton.jit
def _words_indices_kernel(pid_s, s0, n_quads, out_ptr, BLOCK: tl.constexpr):
    s, q, mask, at = tk._words_indices(tl.program_id(0), pid_s, s0, n_quads, BLOCK)
    tl.store(out_ptr, s)
    tl.store(out_ptr + 1 + tl.arange(0, BLOCK), at)


def test_words_indices_are_64_bit():
    """The words kernel's sample s0 + program_id(1) and its output index: with more than 2^31
    samples (about 68 GB of words at one quad) the launch that starts just below 2^31 reaches
    past it (mutant: s in int32)."""
    s0 = (2**31 // tk.MAX_GRID_Y) * tk.MAX_GRID_Y
    pid_s, n_quads, block = tk.MAX_GRID_Y - 1, 3, 4
    out = torch.zeros(1 + block, dtype=torch.int64)
    _words_indices_kernel[(1,)](pid_s, s0, n_quads, out, BLOCK=block)
    s = s0 + pid_s
    assert s >= 2**31 and out.tolist() == [s] + [(s * n_quads + q) * 4 for q in range(block)]


@pytest.mark.parametrize("batch, d, example_stride, wide", [
    (2**31 - 1, 128, 1, False),   # one example per tile: 2^31 - 1 programs, CUDA's most on x
    (2**31, 128, 0, True),        # ... 2^31 programs (a second grid axis), although the last row fits
    (2**31 + 1, 128, 1, True),
    (2**31, 4, 0, False),         # eight rows per tile, the last one 2^31 - 1
    (2**31 + 1, 4, 0, True),      # ... the last tile's padded rows past it
    (1, 2**31, 0, False),         # the last column is 2^31 - 1
    (1, 2**31 + 1, 0, True),      # the last chunk's columns past it
    (2**27, 128, 16, False),      # grad_nlp's last offset (2^27 - 1) 16 = 2^31 - 16
    (2**27 + 1, 128, 16, True),   # ... 2^27 16 = 2^31
    (2**24, 2**10, 256, True),    # B D = 2^34 (int64 either way): WIDE only for grad_nlp's stride
    (2**24, 2**10, 0, False),
])
def test_wide_indices_exactly_where_an_int32_index_would_wrap(batch, d, example_stride, wide):
    """The launch takes the 64-bit tile indices (and their registers) only where a row, a column
    or a grad_nlp offset of the 32-bit path passes 2^31 - 1, or the programs pass the grid's x
    axis: every size up to there keeps the 32-bit path, every size past it takes the 64-bit one."""
    assert tk.wide_indices(batch, d, example_stride) is wide
    assert tk.sample_constexprs(per_example=d, batch=batch, example_stride=example_stride)["WIDE"] is wide


@pytest.mark.parametrize("batch, d", [
    (64, 3072), (2**31 - 1, 128), (2**31, 128), (2**34 - 8, 16), (2**34, 16), (2**34 + 1, 1), (2**40, 3),
    (2**20, 2**30), (8 * (2**31 - 1) * 65535, 1),  # the most both axes hold
])
def test_launch_grid_stays_within_cuda_s_limits(batch, d):
    """The tile programs' grid has at most 2^31 - 1 programs on x and 65535 on y (past them the
    launch failed, at B >= 2^34 with D <= 16 first), covers every program with fewer surplus ones
    than rows, and has a second row only where the launch takes the WIDE kernels, which number
    the programs of both axes (a pure function: nothing of that size is allocated)."""
    n_programs = tk.launch_config(batch, d)[3]
    x, y = tk.launch_grid(batch, d)
    assert 1 <= x <= tk.MAX_GRID_X == 2**31 - 1 and 1 <= y <= tk.MAX_GRID_Y == 65535
    assert 0 <= x * y - n_programs < y
    assert y == 1 or tk.wide_indices(batch, d)
    assert (y > 1) == (n_programs > 2**31 - 1)


def test_launch_grid_refuses_more_programs_than_both_axes_hold():
    batch = 8 * (2**31 - 1) * 65535 + 1
    with pytest.raises(ValueError, match=rf"^B = {batch} examples of D = 1 elements take \d+ tile programs, past "
                                         r"the triton backend's grid of 65535 x 2147483647$"):
        tk.launch_grid(batch, 1)


def test_a_two_axis_grid_gives_the_one_axis_results(monkeypatch):
    """With the grid's x axis capped at 3 programs, the 10 programs of (5, 132) launch on 4 rows
    of 3 (2 surplus) in the WIDE kernels, and give the 1-D grid's results bit for bit (mutant: the
    kernels numbering programs by program_id(0) alone)."""
    shape, k = (5, 132), 2
    mean, std, x = _inputs(shape, torch.float64)
    seed_offset = _seed_offset(3, 4)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn((k, *shape), dtype=torch.float64, generator=g)
    grad_nlp = torch.randn((k, shape[0]), dtype=torch.float64, generator=g)

    def run():
        return (*tk.sample_forward(mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0),
                *tk.sample_backward(grad_out, grad_nlp, mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0))

    one_axis = run()
    monkeypatch.setattr(tk, "MAX_GRID_X", 3)
    assert tk.launch_grid(*shape) == (3, 4) and tk.wide_indices(*shape)
    two_axes = run()
    assert all(torch.equal(a, b) for a, b in zip(two_axes, one_axis))


@pytest.mark.parametrize("transposed", [False, True])
def test_launchers_pass_the_index_width_they_are_given(monkeypatch, transposed):
    """sample_forward and sample_backward ask `wide_indices` with B, D and grad_nlp's example
    stride (1 contiguous, k transposed), and the 64-bit path they launch when told to gives the
    32-bit path's results bit for bit."""
    shape, k = (3, 10), 4
    mean, std, x = _inputs(shape, torch.float64)
    seed_offset = _seed_offset(5, 6)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn((k, *shape), dtype=torch.float64, generator=g)
    grad_nlp = (torch.randn((shape[0], k), dtype=torch.float64, generator=g).t() if transposed
                else torch.randn((k, shape[0]), dtype=torch.float64, generator=g))

    def run():
        return (*tk.sample_forward(mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0),
                *tk.sample_backward(grad_out, grad_nlp, mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0))

    narrow = run()
    asked = []
    monkeypatch.setattr(tk, "wide_indices", lambda *args: asked.append(args) or True)
    wide = run()
    assert asked == [(shape[0], shape[1], 0), (shape[0], shape[1], k if transposed else 1)]
    assert all(torch.equal(a, b) for a, b in zip(wide, narrow))


# ------------------------------------------------------------------------------------------------
# The op against the float64 reference
# ------------------------------------------------------------------------------------------------

def _inputs(shape, dtype, seed=0, mean_scale=2.0, std_range=(-3.0, 2.0)):
    g = torch.Generator().manual_seed(seed)
    mean = (torch.randn(shape, generator=g, dtype=torch.float64) * mean_scale).to(dtype)
    lo, hi = std_range
    std = (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)
    x = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    return mean, std, x


def _compare(shape, dtype, k, with_x, with_noise, seed_offset=None, epsilon=EPS, lo=0.0, hi=1.0,
             mean_scale=2.0, std_range=(-3.0, 2.0), rtol=None):
    """Triton forward and backward against reference.* run in float64 on the same inputs."""
    rtol = rtol or (1e-12 if dtype == torch.float64 else 1e-5)
    mean, std, x = _inputs(shape, dtype, mean_scale=mean_scale, std_range=std_range)
    x = x if with_x else None
    g = torch.Generator().manual_seed(1)
    noise = (torch.randn((k, *shape), generator=g, dtype=torch.float64).to(dtype)
             if with_noise else None)
    if seed_offset is None:
        seed_offset = torch.zeros(2, dtype=torch.int64) if with_noise else _seed_offset(2024, 77)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    if not with_x:
        lo, hi = -math.inf, math.inf

    out, nlp = tk.sample_forward(mean, std, x, noise, seed_offset, k, epsilon, lo, hi)
    ref_out, ref_nlp = reference.sample_forward(d(mean), d(std), d(x), d(noise), seed_offset, k,
                                                epsilon, lo, hi)
    assert out.dtype == dtype and out.shape == (k, *shape)
    assert nlp.dtype == reference.compute_dtype(dtype) and nlp.shape == (k, shape[0])
    _assert_close(out, ref_out, rtol, "out")
    _assert_close(nlp, ref_nlp, rtol, "neg_log_prob")

    gg = torch.Generator().manual_seed(2)
    grad_out = torch.randn(ref_out.shape, generator=gg, dtype=torch.float64)
    grad_nlp = torch.randn(ref_nlp.shape, generator=gg, dtype=torch.float64)
    grads = tk.sample_backward(grad_out.to(dtype), grad_nlp.to(nlp.dtype), mean, std, x, noise,
                               seed_offset, k, epsilon, lo, hi)
    ref_grads = reference.sample_backward(grad_out, grad_nlp, d(mean), d(std), d(x), d(noise),
                                          seed_offset, k, epsilon, lo, hi)
    for name, got, want in zip(("grad_mean", "grad_std_param", "grad_x"), grads, ref_grads):
        if want is None:
            assert got is None, name
            continue
        assert got.dtype == dtype and got.shape == shape, name
        _assert_close(got, want, rtol, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_x", [False, True])
@pytest.mark.parametrize("with_noise", [False, True])
@pytest.mark.parametrize("shape", [(3, 2, 4, 6), (3, 2, 5, 7)])  # D = 48 (quads aligned), D = 70
def test_matches_reference(shape, dtype, with_x, with_noise):
    _compare(shape, dtype, 5, with_x, with_noise)


@pytest.mark.parametrize("shape, k", [
    ((3, 300), 6),    # several element chunks per example: partial sums reduced after the kernel
    ((2, 301), 3),    # the same with D % 4 != 0: quads straddle rows and chunks
    ((5,), 1),        # D = 1: many examples per program
    ((6, 3), 5),      # D = 3, B = 6: row-tiled with masked rows and columns
    ((4, 7), 2),      # D = 7, D = 9: quads straddle rows of one tile
    ((3, 9), 4),
    ((5, 12), 3),     # D = 12: aligned quads, several rows per tile, masked rows and columns
    ((1, 3, 4, 4), 2),
    ((2, 3), 66),     # k > 64 (counter words offset .. offset + 65)
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shapes_and_sample_counts(shape, k, dtype):
    _compare(shape, dtype, k, with_x=True, with_noise=False)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("with_noise", [False, True])
@pytest.mark.parametrize("d", [40, 41])
def test_extreme_inputs(d, dtype, with_noise):
    """|mean| up to 50 and std_param over [-80, 80]: finite and equal to the float64 reference."""
    shape = (4, d)
    mean = torch.linspace(-50, 50, d, dtype=torch.float64).repeat(4, 1)
    std = torch.linspace(-80, 80, 4 * d, dtype=torch.float64).reshape(4, d)
    k = 3
    g = torch.Generator().manual_seed(5)
    noise = torch.randn((k, *shape), generator=g, dtype=torch.float64) * 2 if with_noise else None
    seed_offset = torch.zeros(2, dtype=torch.int64) if with_noise else _seed_offset(99, 1)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    d = lambda t: None if t is None else t.to(dtype).double()  # noqa: E731  (what the kernel sees)
    x_in = torch.rand(shape, dtype=torch.float64)
    for x, (lo, hi) in ((None, (-math.inf, math.inf)), (x_in, (0.0, 1.0))):
        out, nlp = tk.sample_forward(cast(mean), cast(std), cast(x), cast(noise), seed_offset, k,
                                     EPS, lo, hi)
        ref_out, ref_nlp = reference.sample_forward(d(mean), d(std), d(x), d(noise), seed_offset,
                                                    k, EPS, lo, hi)
        _assert_close(out, ref_out, rtol, "out")
        _assert_close(nlp, ref_nlp, rtol, "neg_log_prob")
        grad_out = torch.ones_like(ref_out)
        grad_nlp = torch.full_like(ref_nlp, 0.5)
        grads = tk.sample_backward(cast(grad_out), grad_nlp.to(nlp.dtype), cast(mean), cast(std),
                                   cast(x), cast(noise), seed_offset, k, EPS, lo, hi)
        ref_grads = reference.sample_backward(grad_out, grad_nlp, d(mean), d(std), d(x), d(noise),
                                              seed_offset, k, EPS, lo, hi)
        for name, got, want in zip(("grad_mean", "grad_std_param", "grad_x"), grads, ref_grads):
            if want is not None:
                _assert_close(got, want, rtol, name)


def test_inexact_scalars_reach_float64_kernels_unrounded():
    """epsilon and clamp bounds that float32 cannot hold (Triton passes Python floats as fp32)."""
    _compare((2, 9), torch.float64, 4, with_x=True, with_noise=True,
             epsilon=0.1 + 1e-12, lo=0.1, hi=0.7 + 1e-13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage(dtype):
    """float16/bfloat16 storage, float32 compute: the reference on the same half inputs."""
    shape, k = (3, 40), 5
    mean, std, x = _inputs(shape, dtype)
    seed_offset = _seed_offset(7, 8)
    out, nlp = tk.sample_forward(mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0)
    ref_out, ref_nlp = reference.sample_forward(mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0)
    assert out.dtype == dtype and nlp.dtype == torch.float32
    # One ulp, not half: the 3.9 interpreter truncates float32 -> bfloat16 (GPUs round to nearest).
    ulp = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert ((out.double() - ref_out.double()).abs() <= ulp * ref_out.double().abs() + 1e-6).all()
    _assert_close(nlp, ref_nlp, 1e-5, "neg_log_prob")
    grad_out = torch.randn(out.shape).to(dtype)
    grad_nlp = torch.randn(nlp.shape)
    grads = tk.sample_backward(grad_out, grad_nlp, mean, std, x, None, seed_offset, k,
                               EPS, 0.0, 1.0)
    ref_grads = reference.sample_backward(grad_out, grad_nlp, mean, std, x, None, seed_offset, k,
                                          EPS, 0.0, 1.0)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype
        diff = (got.double() - want.double()).abs()
        assert (diff <= ulp * want.double().abs() + ulp * want.double().abs().max()).all()


def test_clamp_keeps_nan_like_torch_clamp():
    """A NaN in x stays NaN in x_adv (torch.clamp's rule; PTX min/max alone would return a bound),
    and its gradient is zero, as torch.clamp's backward gives."""
    shape, k = (2, 6), 3
    mean, std, x = _inputs(shape, torch.float32)
    x[0, 1] = x[1, 4] = float("nan")
    seed_offset = _seed_offset(3, 4)
    out, _ = tk.sample_forward(mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0)
    ref_out, _ = reference.sample_forward(mean.double(), std.double(), x.double(), None, seed_offset,
                                          k, EPS, 0.0, 1.0)
    assert torch.equal(out.isnan(), ref_out.isnan()) and out[:, 0, 1].isnan().all()
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-6, equal_nan=True)
    grads = tk.sample_backward(torch.ones_like(out), None, mean, std, x, None, seed_offset, k, EPS,
                               0.0, 1.0)
    assert grads[2][0, 1] == 0 and grads[2][1, 4] == 0 and grads[0][0, 1] == 0


@pytest.mark.parametrize("layout", ["none", "scalar", "per_element", "strided"])
@pytest.mark.parametrize("with_nlp", [False, True])
def test_none_and_expanded_gradients(layout, with_nlp):
    """None means zero; expanded grad_out (all strides 0 as from delta.sum(), or strides
    (0, contiguous) over k) is read in place, other layouts are copied: all equal the reference
    with materialised gradients."""
    shape, k = (3, 10), 5
    mean, std, x = _inputs(shape, torch.float64)
    seed_offset = _seed_offset(11, 12)
    g = torch.Generator().manual_seed(4)
    per_element = torch.randn(shape, generator=g, dtype=torch.float64)
    grad_out = {"none": None,
                "scalar": torch.tensor(0.7, dtype=torch.float64).expand(k, *shape),
                "per_element": per_element.expand(k, *shape),
                "strided": torch.randn((*shape, k), generator=g, dtype=torch.float64).movedim(-1, 0)}[layout]
    grad_nlp = torch.randn((k, shape[0]), generator=g, dtype=torch.float64) if with_nlp else None
    if layout != "none":
        assert tk.grad_out_layout(grad_out, k, shape)[0] == {
            "scalar": tk.GRAD_SCALAR, "per_element": tk.GRAD_PER_ELEMENT, "strided": tk.GRAD_FULL}[layout]
    got = tk.sample_backward(grad_out, grad_nlp, mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0)
    dense = lambda t, shp: torch.zeros(shp, dtype=torch.float64) if t is None else t.contiguous()  # noqa: E731
    want = reference.sample_backward(dense(grad_out, (k, *shape)), dense(grad_nlp, (k, shape[0])),
                                     mean, std, x, None, seed_offset, k, EPS, 0.0, 1.0)
    for name, a, b in zip(("grad_mean", "grad_std_param", "grad_x"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------
# Edge cases, determinism, launch configuration
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0), (0,)])
def test_empty_inputs(shape):
    mean = torch.zeros(shape)
    seed_offset = _seed_offset(1, 2)
    for x in (None, torch.zeros(shape)):
        out, nlp = tk.sample_forward(mean, mean, x, None, seed_offset, 3, EPS, 0.0, 1.0)
        assert out.shape == (3, *shape) and nlp.shape == (3, shape[0])
        assert nlp.dtype == torch.float32 and (nlp == 0).all()  # an empty sum
        grads = tk.sample_backward(out, nlp, mean, mean, x, None, seed_offset, 3, EPS, 0.0, 1.0)
        assert grads[0].shape == shape and grads[1].shape == shape
        assert (grads[2] is None) == (x is None)


@pytest.mark.parametrize("d", [32, 33])
def test_same_seed_same_samples_and_offsets_differ(d):
    mean, std, _ = _inputs((2, d), torch.float32)
    a = tk.sample_forward(mean, std, None, None, _seed_offset(5, 10), 6, EPS, -math.inf, math.inf)
    b = tk.sample_forward(mean, std, None, None, _seed_offset(5, 10), 6, EPS, -math.inf, math.inf)
    c = tk.sample_forward(mean, std, None, None, _seed_offset(5, 11), 6, EPS, -math.inf, math.inf)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # offset 11 = offset 10 shifted by one sample: samples 1..5 reappear as 0..4
    assert torch.equal(c[0][:5], a[0][1:]) and torch.equal(c[1][:5], a[1][1:])
    assert not torch.equal(c[0][5], a[0][0])


def test_strided_seed_offset_reads_its_own_values():
    """A (seed, offset) view with a stride (a direct call of the custom op, or a vmap over it,
    may pass one) gives the samples of its values, not of the words next to the seed."""
    mean, std, _ = _inputs((2, 8), torch.float32)
    so = _seed_offset(5, 10)
    strided = torch.stack([so, torch.full((2,), 99)], dim=1)[:, 0]
    assert not strided.is_contiguous() and torch.equal(strided, so)
    out, nlp = tk.sample_forward(mean, std, None, None, so, 2, EPS, -math.inf, math.inf)
    out_s, nlp_s = tk.sample_forward(mean, std, None, None, strided, 2, EPS, -math.inf, math.inf)
    assert torch.equal(out_s, out) and torch.equal(nlp_s, nlp)
    grads = tk.sample_backward(out, nlp, mean, std, None, None, so, 2, EPS, -math.inf, math.inf)
    grads_s = tk.sample_backward(out, nlp, mean, std, None, None, strided, 2, EPS, -math.inf, math.inf)
    assert all(torch.equal(a, b) for a, b in zip(grads_s[:2], grads[:2]))
    assert torch.equal(tk.philox_words(strided, 8, 2), reference.philox_words(5, 10, 8, 2))


def test_launch_config():
    """Tiles of TILE elements, one quad of four consecutive elements per thread."""
    assert tk.TILE == tk.NORMALS_PER_CALL * 32 * tk.NUM_WARPS
    for batch, d in ((64, 3072), (512, 3072), (4096, 3072), (1, 1), (1000, 1), (3, 70), (7, 300),
                     (5, 12)):
        block_b, block_d, n_chunks, n_programs, warps = tk.launch_config(batch, d)
        assert block_d >= tk.MIN_BLOCK_D and block_d % tk.NORMALS_PER_CALL == 0
        assert n_chunks * block_d >= d > (n_chunks - 1) * block_d
        assert n_programs == math.ceil(batch / block_b) * n_chunks and warps == tk.NUM_WARPS
        assert block_b * block_d == tk.TILE or block_b * block_d < tk.TILE and block_b >= batch
    assert tk.launch_config(64, 3072)[:4] == (1, 128, 24, 1536)
    assert tk.sample_loop_trips(5) == 5
    assert tk.sample_constexprs(per_example=12) == {"QUAD_ALIGNED": True, "WIDE": False}
    assert tk.sample_constexprs(per_example=70, batch=3) == {"QUAD_ALIGNED": False, "WIDE": False}


_COMPILE_SCRIPT = r"""
import sys
try:
    import triton.backends.nvidia  # noqa: F401
    from triton.backends.compiler import GPUTarget  # noqa: F401
except ImportError as err:
    print("SKIP no NVIDIA backend in this triton:", err)
    sys.exit(0)
try:  # the ptxas triton compiles with must run here; a ptxas that runs and fails is a failure
    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90)
except (ImportError, TypeError, AttributeError):  # another triton's API: nothing to check ahead
    ptxas = True
except Exception as err:  # triton found none, or one that cannot run on this machine
    print("SKIP no usable ptxas here:", err)
    sys.exit(0)
if ptxas is None or getattr(ptxas, "version", True) is None:
    print("SKIP no usable ptxas here")
    sys.exit(0)
sys.path.insert(0, sys.argv[1])
import sass_report
from adt_fast.ops import triton_kernels as tk

philox = {}
for store, has_x, has_noise, gout, d, batch in (("fp32", True, False, 1, 3072, 64), ("bf16", False, False, 3, 3072, 64),
                                                ("fp64", True, True, 0, 3072, 64),
                                                ("fp32", True, False, 2, 3073, 64),  # D % 4 != 0
                                                ("fp32", True, False, 1, 12, 2**35)):  # WIDE, 2-D grid
    is_fp64 = store == "fp64"
    block_b, block_d, _, _, warps = tk.launch_config(batch, d)
    constexprs = dict(HAS_X=has_x, WANT_GX=has_x, HAS_NOISE=has_noise, GOUT=gout, HAS_GNLP=gout != 0,
                      BLOCK_B=block_b, BLOCK_D=block_d, **tk.sample_constexprs(per_example=d, batch=batch))
    assert constexprs["WIDE"] == (batch > 64)
    for fn in (tk._forward_kernel, tk._backward_kernel):
        try:
            # specialised as a launch is: aligned pointers, B, D and N divisible by 16 where they are
            kernel = sass_report.compile_triton(tk, fn, store, constexprs, warps,
                                                {"B": batch, "D": d, "N": batch * d})
        except TypeError as err:
            print("SKIP compile API differs:", err)
            sys.exit(0)
        ptx = kernel.asm["ptx"]
        forward = fn is tk._forward_kernel
        philox[store, d, forward] = ptx.count("mul.hi.u32")  # Philox's products
        assert has_noise != (philox[store, d, forward] > 0)
        if not is_fp64:  # the float32 fast paths: tanh and softplus (ex2, rcp), the Box-Muller
            # radius (lg2, sqrt), log(1 - t^2) and log sigma (lg2, forward)
            for op in ("ex2", "rcp") + (() if has_noise else ("lg2", "sqrt")):
                assert f"{op}.approx.ftz.f32" in ptx, op
        if has_x and forward and not is_fp64:  # the clamp keeps NaN: min/max.NaN.f32 (float64
            # has no .NaN form; triton selects on isnan there)
            assert "max.NaN.f" in ptx and "min.NaN.f" in ptx, "the clamp drops NaN"
        # a quad per thread, one warp: no layout conversion or reduction through shared memory
        assert kernel.metadata.shared == 0, (store, d, fn.__name__, kernel.metadata.shared)
        assert kernel.asm["cubin"]
for forward in (True, False):  # D % 4 != 0: one Philox call per element instead of per quad, about 4x
    # the products (triton 3.9 emits exactly 4x; 3.6 shares a few of them between calls: 77 for 80)
    assert 3 * philox["fp32", 3072, forward] < philox["fp32", 3073, forward] <= 4 * philox["fp32", 3072, forward], \
        philox
print("OK")
"""


def test_kernels_compile_for_sm90():
    """Compiled mode, which the interpreter does not exercise (types, scf.if, libdevice): the
    kernels lower to PTX and a cubin for sm_90 with the ptxas bundled in the triton wheel. No GPU
    is needed. A subprocess, because triton decorates its own library once per process, in the
    mode of the moment."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(adt_fast.ops.__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    benchmarks = os.path.join(root, "benchmarks")
    result = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, benchmarks], env=env,
                            capture_output=True, text=True, timeout=300)
    if result.returncode == 0 and result.stdout.startswith("SKIP"):
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]

# Restore the environment for the test modules imported after this one (see the docstring).
if _PREVIOUS_INTERPRET is None:
    del os.environ["TRITON_INTERPRET"]
else:
    os.environ["TRITON_INTERPRET"] = _PREVIOUS_INTERPRET
