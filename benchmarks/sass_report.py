"""SASS report of the GPU kernels: registers, occupancy and instructions per element on sm_90.

No GPU is needed: each kernel is compiled for sm_90 (nvcc -cubin for csrc/cuda/kernels.cu, triton's
compiler with a GPUTarget for adt_fast/ops/triton_kernels.py), `cuobjdump -sass` disassembles it
and `cuobjdump -res-usage` gives its registers and static shared memory. `--ref REV` (repeatable)
counts the kernels as they were at a git revision (`git archive REV` into a temporary directory);
`--ref WORKTREE` (the default) counts the working tree.

Counting method (a dynamic count along one thread's common path, not a static size):
- The SASS of a kernel is walked from its entry like one thread would run it, with these rules:
  a conditional forward branch is not taken (so guarded code, such as a lane guard, the `if (warp
  == 0)` part of a reduction or a masked tail, is counted as executed), except one that jumps over
  a call site of an out-of-line slow path (at most 8 instructions holding a CALL: the IEEE
  division's or sqrt's special cases), which is taken;
  `BRA.DIV` (the fallback of a warp that is not converged) is not taken; a conditional backward branch (a loop
  latch) is taken until its loop has run TRIPS times, and a loop tested at its top leaves through
  its exit test after TRIPS trips; unconditional branches, CALL and RET are
  followed; the walk ends at an unconditional EXIT. Each instruction met is counted once, so the
  loop body counts TRIPS times and the prologue and epilogue once; a loop inside another runs
  its trips on every entry.
- For the kernels of the random stream before 2026-12-03 (four samples of an element per Philox
  call), TRIPS is the number of sample groups, ceil(k / 4) = 2 at k = 5, and applies to the
  sample-group loop: the innermost loop whose body holds a Philox call (20
  wide/high 32-bit multiplies, or 19 when ptxas hoists the first round's product of a word that
  is the same for every trip). Any other loop (over tiles, over blocks of samples) runs once:
  it handles one element per thread per trip. CUDA kernels whose source defines kMaxPass are
  templated on the samples of a launch and unroll them; for k <= kMaxPass the instantiation for
  k is counted, its innermost Philox loop is the loop over a thread's kElementsPerThread
  elements, TRIPS is kElementsPerThread, and the count is exact. With one Philox call per quad
  of elements and sample (core/common.h's kElementsPerCall = 4, docs/randomness.md) that loop
  runs kElementsPerThread / 4 times, over a thread's quads; when it holds a loop over the k
  samples (a loop holding one Philox call; the backward's), that one runs k times on each trip.
  A kernel whose sample loop holds guarded lanes is therefore counted as if its last, partial
  group were whole: an upper bound, marked "(≤)". A Triton module says how many trips its sample
  loop runs (`sample_loop_trips(k)`: the whole groups, with the k mod 4 remaining samples as
  straight-line code, in the old stream; k, one sample per trip, in the quad stream) and which
  compile-time constants a launch adds (`sample_constexprs`); its count is then exact for that k.
- Instructions per element = the per-thread count divided by the elements one thread handles
  (BLOCK_B * BLOCK_D / threads for Triton; 1 for the CUDA kernels unless kernels.cu or
  core/chunking.h defines kElementsPerThread), so the prologue and epilogue are amortised over
  those elements and the k samples are included: "per element of mean, all k samples".
- The separate reduction of partial -log p sums (a tiny second kernel or `sum(-1)`) works per
  (sample, example, chunk), not per element, and is not counted.
- Shared memory: the STS/LDS/BAR instructions met on the walk are reported per element, with
  "(in loop)" when some sit inside the sample-group loop. In a Triton kernel those are layout
  conversions or block reductions (convert_layout through shared memory shows up as STS, BAR,
  LDS); in the CUDA kernels, the explicit reduction buffers.

Occupancy is the theoretical one on sm_90 at the kernel's block size: min over 32 blocks/SM, 2048
threads/SM, 65536 registers/SM (allocated per warp in units of 256) and 228 KiB shared memory/SM
(1 KiB reserved per block). Output: a Markdown table for benchmarks/RESULTS.md.

    python benchmarks/sass_report.py --ref de19328 --ref WORKTREE
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parent.parent
WORKTREE = "WORKTREE"
K = 5
SAMPLES_PER_CALL = 4
SLOW_PATH_CALL_SITE = 8  # at most this many instructions around a slow-path CALL
DUMP_DIR: Optional[Path] = None  # --dump: where to keep the disassembly

# sm_90 limits (CUDA occupancy calculator, compute capability 9.0).
SM90 = dict(regs=65536, threads=2048, blocks=32, smem=233472, smem_per_block_reserved=1024,
            reg_alloc_unit=256, warp=32)


# ------------------------------------------------------------------------------------------------
# SASS parsing and the dynamic walk
# ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Instr:
    addr: int
    pred: str  # "" when unpredicated, else e.g. "@P0", "@!UP1"
    op: str  # opcode with modifiers, e.g. "BRA", "MUFU.EX2", "LDG.E.64"
    target: Optional[int]  # branch/call target address


_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_INSTR = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_TARGET_HEX = re.compile(r"(?:^|[\s,])(0x[0-9a-f]+)\s*$")
_TARGET_LABEL = re.compile(r"`\((\.L_x_\d+)\)")


def parse_sass(text: str) -> dict[str, list[Instr]]:
    """Function name -> its instructions, from `cuobjdump -sass` (or nvdisasm) output."""
    raw: dict[str, list[tuple[int, str, str, str]]] = {}
    labels: dict[str, dict[str, int]] = {}
    current = None
    pending: list[str] = []
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            current = m.group(1)
            raw[current], labels[current], pending = [], {}, []
            continue
        if current is None:
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.match(line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                labels[current][name] = addr
            pending = []
            raw[current].append((addr, (m.group(2) or "").strip(), m.group(3), m.group(4).strip()))
    functions = {}
    for name, rows in raw.items():
        instrs = []
        for addr, pred, op, operands in rows:
            target = None
            if op.split(".")[0] in ("BRA", "CALL", "BSSY", "JMP", "BREAK", "BRX"):
                lm = _TARGET_LABEL.search(operands)
                hm = _TARGET_HEX.search(operands)
                if lm:
                    target = labels[name].get(lm.group(1))
                elif hm:
                    target = int(hm.group(1), 16)
            instrs.append(Instr(addr, pred, op, target))
        functions[name] = instrs
    return functions


@dataclasses.dataclass
class Walk:
    count: int  # instructions executed by one thread on the common path
    ops: Counter  # opcode base -> count
    loops: list[tuple[int, int]]  # (header address, body size in instructions) of loops met
    smem_in_loops: int  # STS/LDS/BAR met inside the sample-group loop
    branches_assumed: int  # conditional forward branches assumed not taken


def walk(instrs: list[Instr], trips: "int | dict[int, int]", max_steps: int = 2_000_000) -> Walk:
    """The dynamic count of one thread's common path (see the module docstring for the rules).
    `trips`: the sample-group loop's trips, or the trips of each loop by latch address."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    loop_trips = trips if isinstance(trips, dict) else sample_loop_trips(instrs, trips)
    taken: Counter = Counter()
    ops: Counter = Counter()
    loops: dict[int, int] = {}
    stack: list[int] = []
    smem_in_loops = assumed = count = 0
    i = 0
    while count < max_steps:
        if i >= len(instrs):
            raise ValueError("the walk ran off the end of the function")
        ins = instrs[i]
        base = ins.op.split(".")[0]
        unconditional = ins.pred in ("", "@PT")
        if base == "BRA" and unconditional and ins.target == ins.addr:
            break  # the self-loop padding after the last EXIT
        count += 1
        ops[base] += 1
        if base in ("STS", "LDS", "BAR", "LDSM") and any(instrs[index[latch]].target <= ins.addr <= latch
                                                          for latch in loop_trips):
            smem_in_loops += 1
        if base == "EXIT" and unconditional:
            break
        if base == "RET":
            if not stack:
                break
            i = stack.pop()
            continue
        if base == "CALL" and ins.target is not None:
            stack.append(i + 1)
            i = index[ins.target]
            continue
        if base in ("BRA", "JMP") and ins.target is not None and ".DIV" not in ins.op:
            if unconditional:
                if ins.target < ins.addr:  # the latch of a loop tested at its top
                    loops[ins.target] = (ins.addr - ins.target) // 16 + 1
                    if taken[ins.addr] < loop_trips.get(ins.addr, 1) - 1:
                        taken[ins.addr] += 1
                        i = index[ins.target]
                        continue
                    taken[ins.addr] = 0  # the next entry runs its trips again
                    exit_to = _loop_exit(instrs, index, ins)
                    if exit_to is None:
                        break
                    i = index[exit_to]
                    continue
                i = index[ins.target]
                continue
            if ins.target < ins.addr:  # a loop latch
                loops[ins.target] = (ins.addr - ins.target) // 16 + 1
                if taken[ins.addr] < loop_trips.get(ins.addr, 1) - 1:
                    taken[ins.addr] += 1
                    i = index[ins.target]
                    continue
                taken[ins.addr] = 0  # the loop exits; the next entry runs its trips again
            elif _skips_slow_path(instrs[i + 1:index[ins.target]]):
                i = index[ins.target]  # jumps over a call to an out-of-line slow path: taken
                continue
            else:
                assumed += 1
        i += 1
    else:
        raise ValueError("the walk did not end (a loop without an exit?)")
    return Walk(count, ops, sorted(loops.items()), smem_in_loops, assumed)


PHILOX_MULTIPLIES = 20  # one Philox4x32-10 call: two 32x32 -> 64-bit products per round
# A loop over samples whose quad is fixed may have the first round's product of the quad's word
# hoisted out of it (the counter's other word is the sample's): such a loop still holds a call.
PHILOX_HOISTED = 1


def _loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """(head, latch) of every loop: the targets of backward branches."""
    return [(ins.target, ins.addr) for ins in instrs
            if ins.op.startswith("BRA") and ".DIV" not in ins.op and ins.target is not None
            and ins.target < ins.addr]


def _multiplies(instrs: list[Instr], head: int, latch: int) -> int:
    """Wide/high 32-bit multiplies in [head, latch]: 20 per Philox4x32-10 call."""
    return sum(head <= x.addr <= latch and x.op.startswith(("IMAD.WIDE.U32", "IMAD.HI.U32", "UIMAD.WIDE.U32"))
               for x in instrs)


def _philox_loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """The loops whose body holds at least one Philox call."""
    return [(h, l) for h, l in _loops(instrs) if _multiplies(instrs, h, l) >= PHILOX_MULTIPLIES - PHILOX_HOISTED]


def quad_loop_trips(instrs: list[Instr], k: int, quads: int) -> dict[int, int]:
    """Latch -> trips for kernels that draw one Philox call per quad of elements and sample: the
    innermost loop holding Philox calls is the loop over a thread's `quads` quads when it holds
    several calls (the samples unrolled; ptxas may hoist a few multiplies of the first), else the
    loop over the k samples, inside the loop over quads."""
    philox = _philox_loops(instrs)
    trips = {}
    for h, l in philox:
        if any((h2, l2) != (h, l) and h <= h2 and l2 <= l for h2, l2 in philox):
            continue  # not innermost
        if _multiplies(instrs, h, l) >= 2 * PHILOX_MULTIPLIES:
            trips[l] = quads
            continue
        trips[l] = k
        around = [(h2, l2) for h2, l2 in philox if (h2, l2) != (h, l) and h2 <= h and l <= l2]
        if around:
            trips[min(around, key=lambda hl: hl[1] - hl[0])[1]] = quads
    return trips


def sample_loop_trips(instrs: list[Instr], trips: int) -> dict[int, int]:
    """Latch address -> trips. The sample-group loop is the innermost loop whose body holds a
    Philox call (at least 19 wide/high 32-bit multiplies: PHILOX_HOISTED); it runs `trips`
    times, every other loop (a grid-stride loop over tiles, a loop of row blocks) once per
    element. Without such a loop (a toy kernel), every loop runs `trips` times."""
    philox = _philox_loops(instrs)
    if not philox:
        return {latch: trips for _, latch in _loops(instrs)}
    innermost = [(h, l) for h, l in philox
                 if not any((h2, l2) != (h, l) and h <= h2 and l2 <= l for h2, l2 in philox)]
    return {latch: trips for _, latch in innermost}


def _skips_slow_path(skipped: list[Instr]) -> bool:
    """A branch over a few instructions that call an out-of-line slow path (FCHK/MUFU.RCP then
    `@!P BRA fast; CALL slow; BRA done`), not a guard around a block of real work."""
    return len(skipped) <= SLOW_PATH_CALL_SITE and any(x.op.startswith("CALL") for x in skipped)


def _loop_exit(instrs: list[Instr], index: dict[int, int], latch: Instr) -> Optional[int]:
    """Where a loop closed by an unconditional back edge goes after its last trip: the target of
    its last conditional branch out of the body, or None for a predicated EXIT (the walk ends).
    The test's own instructions on the last trip are not counted twice."""
    for ins in reversed(instrs[index[latch.target]:index[latch.addr]]):
        if ins.pred in ("", "@PT"):
            continue
        if ins.op.startswith("EXIT"):
            return None
        if ins.op.startswith("BRA") and (ins.target or 0) > latch.addr:
            return ins.target
    raise ValueError(f"loop at {latch.target:#x} has no exit")


def occupancy(regs: int, threads: int, smem: int) -> tuple[int, float, str]:
    """(blocks per SM, theoretical occupancy, the limiting resource) on sm_90."""
    warps = math.ceil(threads / SM90["warp"])
    per_warp = math.ceil(max(regs, 1) * SM90["warp"] / SM90["reg_alloc_unit"]) * SM90["reg_alloc_unit"]
    limits = {
        "blocks": SM90["blocks"],
        "threads": SM90["threads"] // (warps * SM90["warp"]),
        "registers": SM90["regs"] // (per_warp * warps),
        "shared memory": SM90["smem"] // (smem + SM90["smem_per_block_reserved"]),
    }
    limiter = min(limits, key=limits.get)
    blocks = limits[limiter]
    return blocks, blocks * warps * SM90["warp"] / SM90["threads"], limiter


# ------------------------------------------------------------------------------------------------
# Tools and sources
# ------------------------------------------------------------------------------------------------

def find_tool(name: str) -> Optional[str]:
    """A CUDA binary utility: PATH, $CUDA_HOME/bin, /usr/local/cuda/bin, then triton's bundled copy."""
    candidates = [shutil.which(name),
                  os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", name),
                  os.path.join("/usr/local/cuda/bin", name)]
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        candidates.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", name))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _run(cmd: list[str], **kwargs) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs).stdout


def disassemble(cubin: Path) -> tuple[dict[str, list[Instr]], dict[str, tuple[int, int]]]:
    """SASS per function and (registers, static shared bytes) per function."""
    cuobjdump = find_tool("cuobjdump")
    if cuobjdump is None:
        raise FileNotFoundError("cuobjdump not found (CUDA toolkit or triton's bundled copy)")
    sass = _run([cuobjdump, "-sass", str(cubin)])
    if DUMP_DIR is not None:
        DUMP_DIR.mkdir(parents=True, exist_ok=True)
        (DUMP_DIR / (cubin.stem + ".sass")).write_text(sass)
    functions = parse_sass(sass)
    usage, current = {}, None
    for line in _run([cuobjdump, "-res-usage", str(cubin)]).splitlines():
        m = re.match(r"\s*Function\s+(\S+):", line)
        if m:
            current = m.group(1)
            continue
        m = re.search(r"REG:(\d+).*SHARED:(\d+)", line)
        if m and current:
            usage[current] = (int(m.group(1)), int(m.group(2)))
    return functions, usage


def source_tree(ref: str, workdir: Path) -> Path:
    """The repository's csrc/ and adt_fast/ops/ at `ref` (or the working tree)."""
    if ref == WORKTREE:
        return ROOT
    dest = workdir / re.sub(r"[^A-Za-z0-9_.-]", "_", ref)
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref, "csrc", "adt_fast/ops"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


@dataclasses.dataclass
class KernelCount:
    backend: str
    direction: str
    name: str
    regs: int
    threads: int
    elements_per_thread: int
    smem: int
    walk: Walk
    exact: bool  # False: the last partial sample group counted whole (an upper bound)

    @property
    def per_element(self) -> float:
        return self.walk.count / self.elements_per_thread

    @property
    def smem_ops(self) -> int:
        return sum(self.walk.ops[o] for o in ("STS", "LDS", "BAR", "LDSM")) / self.elements_per_thread


# ------------------------------------------------------------------------------------------------
# CUDA C++ kernels
# ------------------------------------------------------------------------------------------------

_CUDA_KERNELS = {"forward": "forward_kernel", "backward": "backward_kernel"}


def _demangle(names: Iterable[str]) -> dict[str, str]:
    names = list(names)
    filt = shutil.which("c++filt") or shutil.which("cu++filt")
    if not filt:
        return {n: n for n in names}
    out = _run([filt], input="\n".join(names)).splitlines()
    return dict(zip(names, out))


def cuda_counts(tree: Path, workdir: Path, k: int) -> list[KernelCount]:
    """nvcc -cubin of kernels.cu for sm_90; the float32 kernels without noise, with x."""
    nvcc = find_tool("nvcc")
    source = tree / "csrc" / "cuda" / "kernels.cu"
    if nvcc is None or not source.is_file():
        raise FileNotFoundError("nvcc" if nvcc is None else f"{source} is missing")
    cubin = workdir / f"cuda-{_tag(tree)}.cubin"
    _run([nvcc, "-cubin", "-arch=sm_90", "-O3", "-std=c++17", "-I", str(tree / "csrc"), "-o", str(cubin),
          str(source)])
    functions, usage = disassemble(cubin)
    demangled = _demangle(functions)
    # kElementsPerThread: in kernels.cu, or in core/chunking.h where the work split lives.
    chunking = tree / "csrc" / "core" / "chunking.h"
    text = source.read_text() + (chunking.read_text() if chunking.is_file() else "")
    m = re.search(r"kElementsPerThread\s*=\s*(\d+)", text)
    per_thread = int(m.group(1)) if m else 1
    elf = _run([find_tool("cuobjdump"), "-elf", str(cubin)])
    # Kernels templated on the samples of a launch (kernels.cu's kMaxPass) unroll them: the one
    # instantiated for k has no sample loop; the innermost loop holding Philox calls is the loop
    # over a thread's elements, which runs kElementsPerThread times, and the count is exact.
    m = re.search(r"kMaxPass\s*=\s*(\d+)", text)
    unrolled = m is not None and k <= int(m.group(1))
    # A stream with one Philox call per quad of elements (core/common.h's kElementsPerCall): the
    # loop over a thread's elements takes a quad per trip.
    common = tree / "csrc" / "core" / "common.h"
    m = re.search(r"kElementsPerCall\s*=\s*(\d+)", common.read_text() if common.is_file() else "")
    per_trip = int(m.group(1)) if m else 1
    counts = []
    for direction, base in _CUDA_KERNELS.items():
        pattern = re.compile(rf"\b{base}<float, false, true, (?:true, )?(?:{k}|false)>" if unrolled else rf"\b{base}<float, false, true")
        matches = [f for f, d in demangled.items() if pattern.search(d)]
        if len(matches) != 1:
            raise LookupError(f"{pattern.pattern} not found once in {sorted(demangled.values())}")
        fn = matches[0]
        threads = _max_threads(elf, fn)
        if threads is None:
            raise LookupError(f"{base} has no __launch_bounds__: its block size is unknown")
        regs, smem = usage[fn]
        if unrolled and per_trip > 1:
            trips = quad_loop_trips(functions[fn], k, per_thread // per_trip)
        else:
            trips = per_thread if unrolled else math.ceil(k / SAMPLES_PER_CALL)
        counts.append(KernelCount("cuda", direction, base, regs, threads, per_thread, smem,
                                  walk(functions[fn], trips),
                                  exact=unrolled or k % SAMPLES_PER_CALL == 0))
    return counts


def _max_threads(elf: str, function: str) -> Optional[int]:
    """The block size fixed by __launch_bounds__ (EIATTR_MAX_THREADS of the function's section)."""
    section = re.search(rf"^\.nv\.info\.{re.escape(function)}\s*$(.*?)(?=^\.|\Z)", elf, re.S | re.M)
    m = section and re.search(r"EIATTR_MAX_THREADS.*?Value:\s*(0x[0-9a-f]+)", section.group(1), re.S)
    return int(m.group(1), 16) if m else None


# ------------------------------------------------------------------------------------------------
# Triton kernels
# ------------------------------------------------------------------------------------------------

def load_triton_module(tree: Path):
    """The revision's triton_kernels.py as a private module (it imports only torch and triton)."""
    path = tree / "adt_fast" / "ops" / "triton_kernels.py"
    name = f"_sass_report_triton_{abs(hash(str(tree)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def triton_signature(fn, store: str, compute: str, constexprs: dict) -> dict[str, str]:
    """Triton argument types of a kernel of triton_kernels.py, from its argument names."""
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name == "seed_offset_ptr":
            sig[name] = "*i64"
        elif name in ("part_ptr", "gnlp_ptr"):
            sig[name] = "*" + compute
        elif name.endswith("_ptr"):
            sig[name] = "*" + store
        else:
            sig[name] = "i64" if name.endswith("_bits") else "i32"
    return sig


def compile_triton(tk, fn, store: str, constexprs: dict, num_warps: int, ints: Optional[dict] = None):
    """triton.compile for sm_90 (no GPU needed): the CompiledKernel, cubin in asm['cubin'].

    Specialised as a launch is: pointers 16-byte aligned (torch's allocations), and the integer
    arguments named in `ints` divisible by 16 where their value is."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    is_fp64 = store == "fp64"
    constexprs = {"IS_FP64": is_fp64, "CT": tl.float64 if is_fp64 else tl.float32, **constexprs}
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    sig = triton_signature(fn, store, "fp64" if is_fp64 else "fp32", constexprs)
    ints = ints or {}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if name not in constexprs and (name.endswith("_ptr") or ints.get(name, 1) % 16 == 0)}
    options = {"num_warps": num_warps}
    options.update(getattr(tk, "COMPILE_OPTIONS", {}))  # else this triton's defaults, as launched
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def _triton_launch(tk, k: int, batch: int, per_example: int) -> tuple[int, int, int, dict]:
    """(BLOCK_B, BLOCK_D, num_warps, sample constexprs) of a revision's triton_kernels.py, whose
    helpers' signatures changed with the quad stream (launch_config lost is_fp64;
    sample_constexprs became keyword-only on per_example)."""
    config = tk.launch_config
    n_args = len(inspect.signature(config).parameters)
    block_b, block_d, _, _, warps = config(batch, per_example) if n_args == 2 else config(batch, per_example, False)
    constexprs_of = getattr(tk, "sample_constexprs", None)
    if constexprs_of is None:
        extra = {}
    elif "per_example" in inspect.signature(constexprs_of).parameters:
        extra = constexprs_of(per_example=per_example)
    else:
        extra = constexprs_of(k, block_b, warps)
    return block_b, block_d, warps, extra


def triton_counts(tree: Path, workdir: Path, k: int, batch: int, per_example: int) -> list[KernelCount]:
    """The float32 kernels with x and without noise, tiled for (batch, per_example)."""
    tk = load_triton_module(tree)
    block_b, block_d, warps, extra = _triton_launch(tk, k, batch, per_example)
    threads = warps * 32
    # A contiguous grad_nlp: its example stride 1 is specialised to a constant, as a launch does.
    constexprs = dict(HAS_X=True, WANT_GX=True, HAS_NOISE=False, HAS_GNLP=True, GOUT=1, BLOCK_B=block_b,
                      BLOCK_D=block_d, gnlp_example_stride=1, **extra)
    # Kernels whose sample loop has no partial group (a compile-time tail, or one sample per
    # trip) say how many trips it runs.
    trips_of = getattr(tk, "sample_loop_trips", None)
    trips = trips_of(k) if trips_of else math.ceil(k / SAMPLES_PER_CALL)
    exact = trips_of is not None or k % SAMPLES_PER_CALL == 0
    ints = {"B": batch, "D": per_example, "N": batch * per_example, "gnlp_sample_stride": batch}
    counts = []
    for direction, fn in (("forward", tk._forward_kernel), ("backward", tk._backward_kernel)):
        kernel = compile_triton(tk, fn, "fp32", constexprs, warps, ints)
        cubin = workdir / f"triton-{direction}-{_tag(tree)}.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        functions, usage = disassemble(cubin)
        (name, instrs), = functions.items()
        regs, static_smem = usage[name]
        smem = max(static_smem, int(getattr(kernel.metadata, "shared", 0)))
        counts.append(KernelCount("triton", direction, fn.__name__, regs, threads,
                                  max(1, block_b * block_d // threads), smem,
                                  walk(instrs, trips), exact=exact))
    return counts


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------

def _row(ref: str, c: KernelCount) -> str:
    blocks, occ, limiter = occupancy(c.regs, c.threads, c.smem)
    flag = "-" if c.smem_ops == 0 else f"{c.smem_ops:g}/elem" + (" (in loop)" if c.walk.smem_in_loops else "")
    bound = "" if c.exact else " (≤)"
    return (f"| {ref} | {c.backend} | {c.direction} | {c.regs} | {c.threads} x {c.elements_per_thread} | "
            f"{blocks} ({occ:.0%}, {limiter}) | {c.smem} | {c.per_element:.0f}{bound} | {flag} |")


def report(refs: list[str], k: int, batch: int, per_example: int, backends: list[str]) -> str:
    lines = [f"SASS instructions per element of mean at k={k}, float32 storage with x, sm_90; Triton tiled "
             f"for B={batch}, D={per_example}. Method: benchmarks/sass_report.py's docstring (dynamic count "
             "along one thread's common path; '(≤)' = the last partial sample group counted whole).", "",
             "| revision | backend | pass | registers | threads x elements | blocks/SM (occupancy, limit) "
             "| shared B | SASS instr / element | STS/LDS/BAR |",
             "|---|---|---|---|---|---|---|---|---|"]
    totals = []
    with tempfile.TemporaryDirectory(prefix="sass_report_") as tmp:
        workdir = Path(tmp)
        for ref in refs:
            tree = source_tree(ref, workdir)
            label = ref if ref == WORKTREE else _short(ref)
            for backend in backends:
                try:
                    counts = (cuda_counts(tree, workdir, k) if backend == "cuda"
                              else triton_counts(tree, workdir, k, batch, per_example))
                except (FileNotFoundError, LookupError, subprocess.CalledProcessError, ImportError) as err:
                    detail = getattr(err, "stderr", "") or ""
                    lines.append(f"| {label} | {backend} | - | skipped: {str(err)[:150]} {detail[-200:]} |")
                    continue
                lines.extend(_row(label, c) for c in counts)
                totals.append(f"{label} {backend}: forward + backward = "
                              f"{sum(c.per_element for c in counts):.0f} instructions / element"
                              f"{'' if all(c.exact for c in counts) else ' (upper bound)'}")
    return "\n".join(lines + [""] + [f"- {t}" for t in totals])


def _tag(tree: Path) -> str:
    return "worktree" if tree == ROOT else tree.name


def _short(ref: str) -> str:
    try:
        return _run(["git", "-C", str(ROOT), "rev-parse", "--short", ref]).strip()
    except subprocess.CalledProcessError:
        return ref


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", action="append", help=f"git revision to count (repeatable); {WORKTREE} = "
                        "the working tree (default)")
    parser.add_argument("--backend", action="append", choices=("cuda", "triton"),
                        help="backends to count (default: both)")
    parser.add_argument("-k", type=int, default=K, help="samples per call (default 5)")
    parser.add_argument("--batch", type=int, default=64, help="B for the Triton tile choice (default 64)")
    parser.add_argument("--per-example", type=int, default=3072, help="D = elements per example (3x32x32)")
    parser.add_argument("--dump", type=Path, help="also write each kernel's SASS into this directory")
    args = parser.parse_args(argv)
    global DUMP_DIR
    DUMP_DIR = args.dump
    os.environ.pop("TRITON_INTERPRET", None)
    print(report(args.ref or [WORKTREE], args.k, args.batch, args.per_example, args.backend or ["cuda", "triton"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
