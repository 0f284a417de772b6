"""benchmarks/sass_report.py: the SASS parser, the dynamic-count walk and the occupancy formula."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sass_report  # noqa: E402

# cuobjdump's layout: an address comment, optional predicate, opcode, operands, encoding comment.
TOY_SASS = """
	code for sm_90
		Function : toy
	.headerflags	@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                     /* 0x00000a00ff017b82 */
                                                                              /* 0x000fe20000000800 */
        /*0010*/                   ISETP.GE.AND P0, PT, R0, R17, PT ;         /* 0x000000110000720c */
        /*0020*/               @P0 EXIT ;                                     /* 0x000000000000094d */
        /*0030*/                   FFMA R2, R2, R3, R4 ;                      /* 0x0 */
        /*0040*/              @!P1 BRA 0x80 ;                                 /* 0x0 */
        /*0050*/                   MOV R5, R2 ;                               /* 0x0 */
        /*0060*/                   CALL.REL.NOINC 0x100 ;                     /* 0x0 */
        /*0070*/                   BRA 0x90 ;                                 /* 0x0 */
        /*0080*/                   MUFU.RCP R5, R2 ;                          /* 0x0 */
        /*0090*/                   BRA.DIV UR4, 0x100 ;                       /* 0x0 */
        /*00a0*/              @P2 BRA 0xc0 ;                                  /* 0x0 */
        /*00b0*/                   STG.E desc[UR4][R6.64], R5 ;               /* 0x0 */
        /*00c0*/                   IADD3 R7, R7, 0x1, RZ ;                    /* 0x0 */
        /*00d0*/              @P3 BRA 0x30 ;                                  /* 0x0 */
        /*00e0*/                   EXIT ;                                     /* 0x0 */
        /*00f0*/                   BRA 0xf0;                                  /* 0x0 */
        /*0100*/                   FADD R5, R5, 1 ;                           /* 0x0 */
        /*0110*/                   RET.REL.NODEC R2 0x0 ;                     /* 0x0 */
"""


def test_walk_follows_the_documented_rules():
    (name, instrs), = sass_report.parse_sass(TOY_SASS).items()
    assert name == "toy" and len(instrs) == 18 and instrs[4].target == 0x80 and instrs[4].pred == "@!P1"
    # prologue 0x00-0x20 (3, the predicated EXIT not taken); body 0x30-0xd0: the branch over the
    # slow-path CALL is taken (FFMA, BRA, MUFU), BRA.DIV and @P2 fall through (BRA.DIV, BRA, STG,
    # IADD3, latch): 8 per trip; then the final EXIT.
    for trips in (1, 2, 5):
        walk = sass_report.walk(instrs, trips)
        assert walk.count == 3 + 8 * trips + 1
        assert walk.loops == [(0x30, 11)] and walk.ops["CALL"] == 0 and walk.ops["STG"] == trips


# An outer loop (0x10-0x50) around an inner one (0x20-0x30): with no Philox multiplies in either,
# every loop runs TRIPS times, and the inner one TRIPS times on each entry.
NESTED_SASS = """
		Function : nested
        /*0000*/                   MOV R1, RZ ;                               /* 0x0 */
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;                    /* 0x0 */
        /*0020*/                   FFMA R3, R3, R3, R4 ;                      /* 0x0 */
        /*0030*/              @P1 BRA 0x20 ;                                  /* 0x0 */
        /*0040*/                   FADD R4, R4, R3 ;                          /* 0x0 */
        /*0050*/              @P0 BRA 0x10 ;                                  /* 0x0 */
        /*0060*/                   EXIT ;                                     /* 0x0 */
        /*0070*/                   BRA 0x70;                                  /* 0x0 */
"""


def test_walk_runs_an_inner_loop_its_trips_on_every_entry():
    (_, instrs), = sass_report.parse_sass(NESTED_SASS).items()
    for trips in (1, 2, 3):
        walk = sass_report.walk(instrs, trips)
        # MOV, then per outer trip: IADD3, trips x (FFMA, latch), FADD, latch; then EXIT
        assert walk.count == 1 + trips * (2 + 2 * trips + 1) + 1
        assert walk.ops["FFMA"] == trips * trips


def _loop_sass(name: str, multiplies: int, nested: bool) -> str:
    """A kernel whose loop holds `multiplies` Philox multiplies, inside an outer loop if `nested`."""
    lines, addr = [], 0

    def emit(text):
        nonlocal addr
        lines.append(f"        /*{addr:04x}*/                   {text} ;     /* 0x0 */")
        addr += 0x10

    emit("MOV R1, RZ")
    outer = addr
    emit("IADD3 R2, R2, 0x1, RZ")
    inner = addr
    for _ in range(multiplies):
        emit("IMAD.WIDE.U32 R4, R4, -0x2daee0ad, RZ")
    emit(f"@P1 BRA 0x{inner:x}")
    if nested:
        emit("FADD R6, R6, R4")
        emit(f"@P0 BRA 0x{outer:x}")
    emit("EXIT")
    emit(f"BRA 0x{addr:x}")
    return f"\t\tFunction : {name}\n" + "\n".join(lines) + "\n"


def test_quad_loop_trips():
    """One Philox call per quad and sample: a loop holding one call is the sample loop (k trips)
    inside the loop over quads; a loop holding several is the quad loop with the samples unrolled."""
    (_, rolled), = sass_report.parse_sass(_loop_sass("rolled", 20, nested=True)).items()
    trips = sass_report.quad_loop_trips(rolled, k=5, quads=2)
    assert sorted(trips.values()) == [2, 5]
    walk = sass_report.walk(rolled, trips)
    # MOV, then 2 x (IADD3, 5 x (20 multiplies, latch), FADD, latch), EXIT
    assert walk.count == 1 + 2 * (1 + 5 * 21 + 2) + 1
    (_, unrolled), = sass_report.parse_sass(_loop_sass("unrolled", 98, nested=False)).items()
    trips = sass_report.quad_loop_trips(unrolled, k=5, quads=2)
    assert list(trips.values()) == [2]
    assert sass_report.walk(unrolled, trips).count == 2 + 2 * 99 + 1


def test_occupancy_on_sm90():
    assert sass_report.occupancy(32, 128, 0)[:2] == (16, 1.0)  # threads limit
    assert sass_report.occupancy(64, 256, 0) == (4, 0.5, "registers")  # 64 regs: 4 x 256 threads
    assert sass_report.occupancy(40, 128, 0)[0] == 12  # 40 regs -> 1280 per warp
    assert sass_report.occupancy(16, 32, 0) == (32, 0.5, "blocks")
    assert sass_report.occupancy(16, 256, 100_000)[2] == "shared memory"


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc missing")
def test_counts_a_compiled_loop(tmp_path):
    """A real cubin: registers and block size parse, and one more trip adds exactly the loop body."""
    if sass_report.find_tool("cuobjdump") is None:
        pytest.skip("cuobjdump missing")
    source = tmp_path / "toy.cu"
    source.write_text(
        "__global__ void __launch_bounds__(128) toy(const float* x, float* y, int n, int k) {\n"
        "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
        "  if (i >= n) return;\n"
        "  float acc = 0.f;\n"
        "#pragma unroll 1\n"
        "  for (int s = 0; s < k; ++s) acc = acc * 0.5f + x[i + s * n];\n"
        "  y[i] = acc;\n"
        "}\n")
    cubin = tmp_path / "toy.cubin"
    nvcc = sass_report.find_tool("nvcc")
    subprocess.run([nvcc, "-cubin", "-arch=sm_90", "-O3", "-o", str(cubin), str(source)], check=True)
    functions, usage = sass_report.disassemble(cubin)
    (name, instrs), = functions.items()
    assert "toy" in name and usage[name][0] > 0
    elf = subprocess.run([sass_report.find_tool("cuobjdump"), "-elf", str(cubin)], capture_output=True,
                         text=True, check=True).stdout
    assert sass_report._max_threads(elf, name) == 128
    one, three = sass_report.walk(instrs, 1), sass_report.walk(instrs, 3)
    (_, body), = one.loops
    assert three.count - one.count == 2 * body and three.ops["LDG"] == 3 * one.ops["LDG"]


UNROLLED_TOY_CONSTANTS = "constexpr int kMaxPass = 8;\nconstexpr int kElementsPerThread = 4;\n"
UNROLLED_TOY = """
template <class S, bool kNoise, bool kX, int kPass>
__global__ void __launch_bounds__(128) {name}(const unsigned* in, unsigned* out, int n) {{
  const int first = blockIdx.x * blockDim.x * kElementsPerThread + threadIdx.x;
#pragma unroll 1
  for (int e = 0; e < kElementsPerThread; ++e) {{
    const int i = first + e * blockDim.x;
    if (i >= n) break;
    unsigned a = in[i], b = a ^ 0x1234u;
#pragma unroll
    for (int r = 0; r < 10 * kPass; ++r) {{  // ten "Philox rounds" per sample
      b ^= __umulhi(a, 0xD2511F53u);
      a = a * 0xCD9E8D57u + b;
    }}
    out[i] = a ^ b;
  }}
}}
template __global__ void {name}<float, false, true, 4>(const unsigned*, unsigned*, int);
template __global__ void {name}<float, false, true, 5>(const unsigned*, unsigned*, int);
template __global__ void {name}<float, true, true, 5>(const unsigned*, unsigned*, int);
"""


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc missing")
def test_counts_kernels_templated_on_the_samples(tmp_path):
    """kernels.cu's form (kMaxPass, kElementsPerThread): the k = 5 instantiation without noise is
    counted, its element loop runs kElementsPerThread times, and the count is per element, exact."""
    if sass_report.find_tool("cuobjdump") is None:
        pytest.skip("cuobjdump missing")
    cuda = tmp_path / "tree" / "csrc" / "cuda"
    cuda.mkdir(parents=True)
    (cuda / "kernels.cu").write_text(UNROLLED_TOY_CONSTANTS + UNROLLED_TOY.format(name="forward_kernel")
                                     + UNROLLED_TOY.format(name="backward_kernel"))
    counts = sass_report.cuda_counts(tmp_path / "tree", tmp_path, 5)
    assert [c.direction for c in counts] == ["forward", "backward"]
    cubin = next(tmp_path.glob("cuda-*.cubin"))
    functions, _ = sass_report.disassemble(cubin)
    demangled = sass_report._demangle(functions)
    for c in counts:
        assert c.exact and c.elements_per_thread == 4 and c.threads == 128
        name = next(f for f, d in demangled.items() if f"{c.name}<float, false, true, 5>" in d)
        one, four = sass_report.walk(functions[name], 1), sass_report.walk(functions[name], 4)
        (_, body), = one.loops
        assert c.walk.count == four.count == one.count + 3 * body
        assert c.per_element == four.count / 4
        assert c.walk.ops["STG"] == 4
