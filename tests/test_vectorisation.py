"""g++ vectorises every `omp simd` loop of the CPU kernels (csrc/cpu/kernels_impl.h).

The CPU kernels are only fast while g++ turns those loops into AVX2 code, and nothing else notices
when it stops: the results stay the same. (Passing a loop-local struct to a helper by reference once
did it, and the kernels ran 3-4x slower.) This compiles kernels_avx2.cpp with the code-generation
flags setup.py and CMakeLists.txt use and reads g++'s own report (-fopt-info-vec): each loop must be
vectorised with 32-byte vectors and never reported as a loop g++ could not vectorise.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "csrc" / "cpu" / "kernels_impl.h"
FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]  # setup.py's and CMake's
GXX = shutil.which("g++")
REPORT = re.compile(r"kernels_impl\.h:(\d+):\d+: (optimized|missed): (.*)")


def simd_loops(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) 1-based lines of each loop that follows `#pragma omp simd`, its body included."""
    loops = []
    for i, line in enumerate(lines):
        if not line.strip().startswith("#pragma omp simd"):
            continue
        first = next(j for j in range(i + 1, len(lines)) if lines[j].lstrip().startswith("for ("))
        depth, last = 0, first
        for j in range(first, len(lines)):
            depth += lines[j].count("{") - lines[j].count("}")
            last = j
            if depth <= 0 and (j > first or "{" not in lines[first]):
                break
        loops.append((first + 1, last + 1))
    return loops


def vectoriser_report(tmp_path: Path) -> list[tuple[int, str, str]]:
    """(line, kind, message) of g++'s vectoriser remarks on kernels_impl.h, AVX2 build."""
    report = tmp_path / "vec.txt"
    subprocess.run([GXX, "-std=gnu++17", "-I", str(ROOT / "csrc"), *FLAGS, "-c",
                    str(ROOT / "csrc" / "cpu" / "kernels_avx2.cpp"), "-o", str(tmp_path / "k.o"),
                    f"-fopt-info-vec-optimized={report}", f"-fopt-info-vec-missed={report}"],
                   check=True, capture_output=True, text=True)
    return [(int(m.group(1)), m.group(2), m.group(3))
            for m in map(REPORT.search, report.read_text().splitlines()) if m]


def test_simd_loops_are_found_with_their_bodies():
    lines = ["x", "#pragma omp simd", "  for (int i = 0; i < n; ++i) {", "    a[i] = 0;", "  }",
             "#pragma omp simd reduction(+ : s)", "  for (int j = 0; j < n; ++j) s += a[j];", "y"]
    assert simd_loops(lines) == [(3, 5), (7, 7)]


@pytest.mark.skipif(GXX is None, reason="g++ is not installed (-fopt-info is a GCC option)")
def test_every_simd_loop_of_the_cpu_kernels_is_vectorised(tmp_path):
    loops = simd_loops(KERNELS.read_text().splitlines())
    assert len(loops) >= 7, "kernels_impl.h lost its omp simd loops?"
    remarks = vectoriser_report(tmp_path)
    failures = []
    for first, last in loops:
        inside = [(line, kind, msg) for line, kind, msg in remarks if first <= line <= last]
        if not any(kind == "optimized" and "loop vectorized using 32 byte vectors" in msg for _, kind, msg in inside):
            failures.append(f"lines {first}-{last}: no 'loop vectorized using 32 byte vectors'")
        missed = sorted({line for line, kind, msg in inside if kind == "missed" and "couldn't vectorize loop" in msg})
        if missed:
            failures.append(f"lines {first}-{last}: g++ could not vectorise the loop at line(s) {missed}")
    assert not failures, "g++ no longer vectorises CPU kernel loops (kernels_avx2.cpp):\n" + "\n".join(failures)
