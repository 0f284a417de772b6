"""Builds the extension adt_fast._C; the package metadata lives in pyproject.toml.

    pip install --no-build-isolation -e .      (uses the torch already installed)

The extension always holds the CPU kernels (csrc/cpu) and, when torch was built with CUDA and nvcc
is found (CUDA_HOME), the CUDA kernels (csrc/cuda). If it cannot be compiled the install still
succeeds with a warning: adt_fast then runs on its reference (and Triton) backends and
adt_fast.backends() says that the extension is missing.

Environment variables:
    ADT_FAST_NO_EXTENSION=1   do not build the extension at all
    ADT_FAST_NO_CUDA=1        build the CPU kernels only, even where CUDA is available
    ADT_FAST_CUDA_ARCH        CUDA architectures, TORCH_CUDA_ARCH_LIST syntax ("9.0", "8.0;9.0+PTX").
                              Default: $TORCH_CUDA_ARCH_LIST if set, else "9.0+PTX" (H100/H200,
                              with PTX that newer GPUs can JIT-compile)
    ADT_FAST_DEBUG=1          compile with -O0 -g
    MAX_JOBS                  parallel compile jobs (torch's ninja build)

CPU code generation: the kernels are compiled three times from one source (csrc/cpu/
kernels_impl.h) for generic x86-64, AVX2+FMA and AVX-512 (`#pragma GCC target`), and the best
one the running CPU supports is chosen at load time; so no -march flag is needed and the wheel runs
on any x86-64 CPU. -fno-math-errno and -fno-trapping-math let g++ vectorise sqrt and the branch-free
selects (they change no result); -ffast-math is not used (it would reassociate sums and break the
exact range reductions).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import traceback

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(ROOT, "pyproject.toml")) as _handle:  # one source for the version
    VERSION = re.search(r'^version\s*=\s*"([^"]+)"', _handle.read(), re.M).group(1)
CPU_SOURCES = [
    "csrc/binding.cpp",
    "csrc/cpu/cpu_api.cpp",
    "csrc/cpu/kernels_generic.cpp",
    "csrc/cpu/kernels_avx2.cpp",
    "csrc/cpu/kernels_avx512.cpp",
]
CUDA_SOURCES = ["csrc/cuda/kernels.cu"]
CUDA_LIBRARIES = {"cudart", "c10_cuda", "torch_cuda", "torch_cuda_cu", "torch_cuda_cpp"}
# Written next to the package when the extension could not be built (removed when it could), so
# that adt_fast can say why its C++ backends are missing.
BUILD_ERROR_FILE = "_C_build_error.txt"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _warn(message: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (adt_fast): {message}\n{bar}\n", file=sys.stderr, flush=True)


def _cuda_arch_tokens(arch_list: str) -> str:
    """"8.0;9.0+PTX" -> "sm_80,sm_90,compute_90" (recorded in build_info)."""
    tokens = []
    for item in arch_list.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        ptx = item.endswith("+PTX")
        number = item.replace("+PTX", "").replace(".", "")
        if number.isalnum():
            tokens.append(f"sm_{number}")
            if ptx:
                tokens.append(f"compute_{number}")
    return ",".join(tokens) or "unknown"


def _want_cuda(torch, cuda_home) -> str | None:
    """None if the CUDA kernels should be built, else why not."""
    if _flag("ADT_FAST_NO_CUDA"):
        return "ADT_FAST_NO_CUDA=1"
    if torch.version.cuda is None:
        return "this torch has no CUDA support"
    if cuda_home is None:
        return "no CUDA toolkit found (set CUDA_HOME)"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not (os.path.exists(nvcc) or shutil.which("nvcc")):
        return f"nvcc not found under {cuda_home}"
    return None


def _extension_setup():
    """(ext_modules, cmdclass) for setup()."""
    if _flag("ADT_FAST_NO_EXTENSION"):
        print("adt_fast: ADT_FAST_NO_EXTENSION=1, not building adt_fast._C", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as err:  # torch missing or broken: the pure-Python package still installs
        _warn(f"cannot import torch.utils.cpp_extension ({err}); adt_fast._C is not built. "
              "Install torch first and use `pip install --no-build-isolation -e .`")
        return [], {}

    debug = _flag("ADT_FAST_DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -g0 (smaller .so) is a host-compiler flag only: nvcc 13 rejects it with "Unknown option".
    # No -std flag: torch picks the standard its headers need (C++17, or C++20 from torch 2.13 on).
    cxx_flags = [*opt, *([] if debug else ["-g0"]), "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
                 f"-DADT_FAST_VERSION_TOKENS={VERSION}", "-Wno-unknown-pragmas"]
    link_flags = ["-fopenmp"]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp; the kernels then run on one thread
        cxx_flags.remove("-fopenmp")
        link_flags.remove("-fopenmp")

    why_no_cuda = _want_cuda(torch, CUDA_HOME)
    if why_no_cuda is None:
        arch = (os.environ.get("ADT_FAST_CUDA_ARCH") or os.environ.get("TORCH_CUDA_ARCH_LIST")
                or "9.0+PTX")
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch  # read by torch's -gencode flag builder
        nvcc_flags = [*opt, "-lineinfo", f"-DADT_FAST_CUDA_ARCHS_TOKENS={_cuda_arch_tokens(arch)}"]
        ext = CUDAExtension(
            "adt_fast._C", CPU_SOURCES + CUDA_SOURCES, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": [*cxx_flags, "-DADT_FAST_WITH_CUDA"], "nvcc": nvcc_flags},
            extra_link_args=link_flags, optional=True)
        ext._adt_cuda = True
        print(f"adt_fast: building adt_fast._C with CPU and CUDA kernels (TORCH_CUDA_ARCH_LIST={arch})",
              file=sys.stderr)
    else:
        ext = CppExtension(
            "adt_fast._C", CPU_SOURCES, include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags, optional=True)
        ext._adt_cuda = False
        print(f"adt_fast: building adt_fast._C with CPU kernels only ({why_no_cuda})", file=sys.stderr)

    class BuildExtensionWithFallback(BuildExtension):
        """torch's BuildExtension (ninja); a CUDA build that fails is retried CPU-only, and a build
        that still fails leaves the package installable without the extension."""

        def run(self):
            self._record_error(None)
            try:
                super().run()
            except Exception as err:  # e.g. no C++ compiler at all
                _warn(f"building adt_fast._C failed: {err}\nadt_fast will use its reference/Triton "
                      "backends; adt_fast.backends() reports the extension as missing.")
                self._record_error(f"building adt_fast._C failed: {err}")

        def _record_error(self, message):
            """Write (or, with None, remove) the build error next to the package."""
            dirs = [os.path.join(self.build_lib, "adt_fast")]
            if self.inplace or getattr(self, "editable_mode", False):
                dirs.append(os.path.join(ROOT, "adt_fast"))
            for folder in dirs:
                path = os.path.join(folder, BUILD_ERROR_FILE)
                try:
                    if message is None:
                        if os.path.exists(path):
                            os.remove(path)
                    else:
                        os.makedirs(folder, exist_ok=True)
                        with open(path, "w") as handle:
                            handle.write(message.strip() + "\n")
                except OSError:
                    pass

        def build_extension(self, ext):
            from setuptools.errors import CompileError
            try:
                super().build_extension(ext)
                return
            except Exception as err:
                first = err
                if not getattr(ext, "_adt_cuda", False):
                    self._give_up(ext, first)
                    raise CompileError(str(first)) from first
            _warn(f"compiling the CUDA kernels failed ({first}); retrying adt_fast._C with the CPU "
                  "kernels only")
            ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
            ext.extra_compile_args = {"cxx": [f for f in ext.extra_compile_args["cxx"]
                                              if f != "-DADT_FAST_WITH_CUDA"]}
            ext.libraries = [lib for lib in ext.libraries if lib not in CUDA_LIBRARIES]
            ext._adt_cuda = False
            try:
                super().build_extension(ext)
            except Exception as err:
                self._give_up(ext, err)
                raise CompileError(str(err)) from err

        def _give_up(self, ext, err):
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            self._record_error(f"compiling {ext.name} failed ({detail}); see the build log "
                               "(pip install -v) for the compiler's messages")
            _warn(f"could not compile {ext.name}: {detail}\nThe install continues without it: "
                  "adt_fast uses its reference (and Triton) backends, and adt_fast.backends() says "
                  "that the C++ extension is not built. Fix the compiler error above and reinstall.")

    return [ext], {"build_ext": BuildExtensionWithFallback.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension_setup()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
