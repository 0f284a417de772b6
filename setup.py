"""Builds the extension adt_fast._C; the package metadata lives in pyproject.toml.

    pip install --no-build-isolation -e .      (uses the torch already installed)

The extension always holds the CPU kernels (csrc/cpu) and, when torch was built with CUDA and the
CUDA toolkit at CUDA_HOME has the same major version, the CUDA kernels (csrc/cuda). If the CUDA part
cannot be built the extension is built with the CPU kernels only, and if that fails too the install
still succeeds: adt_fast then runs on its reference (and Triton) backends and adt_fast.backends()
says that the extension is missing. Each fallback prints why (pip shows it with -v).
ADT_FAST_REQUIRE_CUDA=1 turns every fallback into an error that fails the install.

Environment variables:
    ADT_FAST_REQUIRE_CUDA=1   fail unless the CUDA kernels are built (CI, GPU machines)
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

This file is also imported by tests/test_build.py, which is why setup() runs only as __main__.
"""

from __future__ import annotations

import os
import re
import subprocess
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
DEFAULT_CUDA_ARCH = "9.0+PTX"
# Written next to the package when the extension could not be built (removed when it could), so
# that adt_fast can say why its C++ backends are missing.
BUILD_ERROR_FILE = "_C_build_error.txt"
# Forced into the nvcc compile (--pre-include): defines ADT_FAST_CUDA_ARCHS_TOKENS, the targets that
# build_info() reports. A header rather than -D, because nvcc splits -D values at commas.
TARGETS_HEADER = "adt_fast_cuda_targets.h"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _warn(message: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nWARNING (adt_fast): {message}\n{bar}\n", file=sys.stderr, flush=True)


def _cuda_required(reason: str) -> SystemExit:
    """The error that ends the install when ADT_FAST_REQUIRE_CUDA=1 and the CUDA kernels are not built."""
    return SystemExit(f"adt_fast: ADT_FAST_REQUIRE_CUDA=1, but the CUDA kernels are not built: {reason}")


def _nvcc_release(nvcc: str) -> str:
    """"13.0" from `nvcc --version` (torch compares the same number with torch.version.cuda)."""
    output = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release (\d+\.\d+)", output)
    if match is None:
        raise RuntimeError(f"no 'release X.Y' in the output of `{nvcc} --version`")
    return match.group(1)


def _why_no_cuda(torch_cuda: str | None, cuda_home: str | None) -> str | None:
    """None if the CUDA kernels can be built with this torch and toolkit, else why not.

    A toolkit whose major version differs from torch's is refused here: torch's BuildExtension would
    raise on it before compiling anything."""
    if _flag("ADT_FAST_NO_CUDA"):
        return "ADT_FAST_NO_CUDA=1"
    if torch_cuda is None:
        return "this torch has no CUDA support (torch.version.cuda is None)"
    if cuda_home is None:
        return "no CUDA toolkit found (set CUDA_HOME)"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.isfile(nvcc):
        return f"nvcc not found at {nvcc} (set CUDA_HOME)"
    try:
        release = _nvcc_release(nvcc)
    except (OSError, subprocess.CalledProcessError, RuntimeError) as err:
        return f"cannot read the CUDA toolkit's version ({err})"
    if release.split(".")[0] != torch_cuda.split(".")[0]:
        return (f"the CUDA toolkit at {cuda_home} is {release} but torch was built with CUDA "
                f"{torch_cuda}; point CUDA_HOME at a {torch_cuda.split('.')[0]}.x toolkit or install "
                f"a torch built for CUDA {release}")
    return None


def _cuda_arch_list() -> tuple[str, str]:
    """(architecture list, where it came from)."""
    for name in ("ADT_FAST_CUDA_ARCH", "TORCH_CUDA_ARCH_LIST"):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip(), name
    return DEFAULT_CUDA_ARCH, "the default"


def _gencode_flags(arch_list: str) -> list[str]:
    """torch's -gencode flags for a TORCH_CUDA_ARCH_LIST value ("8.0;9.0+PTX", "Hopper").

    setup.py passes them to nvcc itself (torch then adds none), so that build_info() records
    exactly the targets compiled."""
    from torch.utils.cpp_extension import _get_cuda_arch_flags

    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    return _get_cuda_arch_flags()


def _cuda_targets(gencode_flags: list[str]) -> list[str]:
    """The code= targets of -gencode flags: machine code (sm_XX) first, then PTX (compute_XX)."""
    targets: list[str] = []
    for flag in gencode_flags:
        match = re.search(r"code=\[?([\w,]+)\]?$", flag)
        if match is None:
            raise ValueError(f"unexpected nvcc architecture flag {flag!r}")
        targets += [t for t in match.group(1).split(",") if t not in targets]
    return sorted(targets, key=lambda target: target.startswith("compute_"))


def _targets_header(targets: list[str]) -> str:
    return f"#define ADT_FAST_CUDA_ARCHS_TOKENS {','.join(targets)}\n"


def _extension_setup():
    """(ext_modules, cmdclass) for setup()."""
    require_cuda = _flag("ADT_FAST_REQUIRE_CUDA")
    if _flag("ADT_FAST_NO_EXTENSION"):
        if require_cuda:
            raise _cuda_required("ADT_FAST_NO_EXTENSION=1")
        print("adt_fast: ADT_FAST_NO_EXTENSION=1, not building adt_fast._C", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except Exception as err:  # torch missing or broken: the pure-Python package still installs
        if require_cuda:
            raise _cuda_required(f"cannot import torch.utils.cpp_extension ({err})") from err
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
    include_dirs = [os.path.join(ROOT, "csrc")]

    def cpu_extension():  # fresh flag lists each time: torch's BuildExtension appends to them
        return CppExtension("adt_fast._C", CPU_SOURCES, include_dirs=include_dirs,
                            extra_compile_args={"cxx": list(cxx_flags)}, extra_link_args=list(link_flags))

    why_no_cuda = _why_no_cuda(torch.version.cuda, CUDA_HOME)
    if why_no_cuda is not None:
        if require_cuda:
            raise _cuda_required(why_no_cuda)
        message = f"building adt_fast._C with the CPU kernels only: {why_no_cuda}"
        if torch.version.cuda is None or _flag("ADT_FAST_NO_CUDA"):  # nothing unexpected
            print(f"adt_fast: {message}", file=sys.stderr)
        else:
            _warn(message)
        ext, cuda_targets = cpu_extension(), None
    else:
        arch, source = _cuda_arch_list()
        try:
            gencode = _gencode_flags(arch)
            cuda_targets = _cuda_targets(gencode)
        except Exception as err:  # a typo here must not silently drop the CUDA kernels
            raise SystemExit(f"adt_fast: {arch!r} ({source}) is not a CUDA architecture list torch "
                             f"accepts ({err}); examples: '9.0', '8.0;9.0+PTX'") from err
        ext = CUDAExtension(
            "adt_fast._C", CPU_SOURCES + CUDA_SOURCES, include_dirs=include_dirs,
            extra_compile_args={"cxx": [*cxx_flags, "-DADT_FAST_WITH_CUDA"],
                                "nvcc": [*opt, "-lineinfo", *gencode]},
            extra_link_args=link_flags)
        print(f"adt_fast: building adt_fast._C with the CPU and CUDA kernels "
              f"({', '.join(cuda_targets)} from {arch!r}, {source})", file=sys.stderr)

    class BuildExtensionWithFallback(BuildExtension):
        """torch's BuildExtension (ninja). Whatever stops the CUDA build (torch's toolkit and compiler
        checks, nvcc) retries with the CPU kernels only; a build that still fails leaves the package
        installable without the extension. ADT_FAST_REQUIRE_CUDA=1 lets every failure through."""

        def run(self):
            self._record_error(None)
            try:
                super().run()
            except Exception as err:  # e.g. no C++ compiler at all
                if require_cuda:
                    raise
                detail = "".join(traceback.format_exception_only(type(err), err)).strip()
                message = (f"building adt_fast._C failed ({detail}); see the build log (pip install -v) "
                           "for the compiler's messages")
                self._record_error(message)
                _warn(f"{message}\nThe install continues without it: adt_fast uses its reference (and "
                      "Triton) backends, and adt_fast.backends() says that the C++ extension is not "
                      "built. Fix the error above and reinstall.")

        def build_extensions(self):
            if cuda_targets is None:
                return super().build_extensions()
            header = os.path.join(os.path.abspath(self.build_temp), TARGETS_HEADER)
            os.makedirs(os.path.dirname(header), exist_ok=True)
            with open(header, "w") as handle:
                handle.write(_targets_header(cuda_targets))
            self.extensions[0].extra_compile_args["nvcc"] += ["--pre-include", header]
            try:
                super().build_extensions()
            except Exception as err:
                if require_cuda:
                    raise _cuda_required(f"building it failed ({err})") from err
                _warn(f"building the CUDA kernels failed ({err}); retrying adt_fast._C with the CPU "
                      "kernels only (pip install -v shows the compiler's messages)")
                # The CPU-only configuration, keeping what setuptools attached to the extension
                vars(self.extensions[0]).update(vars(cpu_extension()))
                super().build_extensions()

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

    return [ext], {"build_ext": BuildExtensionWithFallback.with_options(use_ninja=True)}


if __name__ == "__main__":
    ext_modules, cmdclass = _extension_setup()
    setup(ext_modules=ext_modules, cmdclass=cmdclass)
