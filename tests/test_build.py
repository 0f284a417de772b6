"""setup.py's decisions, tested as functions: which CUDA targets are recorded, when the CUDA kernels
are skipped (and why), and ADT_FAST_REQUIRE_CUDA=1; and what the sdist holds. No compiler runs
here; `make cuda-build` (CI, whenever nvcc is present) does the real CUDA build against torch's
CUDA wheel."""

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension as cpp_extension

ROOT = Path(__file__).resolve().parent.parent


def _load_setup_py():
    spec = importlib.util.spec_from_file_location("adt_fast_setup_py", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: defines the functions, runs no setup()
    return module


setup_py = _load_setup_py()
BUILD_ENV = ("ADT_FAST_REQUIRE_CUDA", "ADT_FAST_NO_CUDA", "ADT_FAST_NO_EXTENSION", "ADT_FAST_CUDA_ARCH",
             "TORCH_CUDA_ARCH_LIST")


@pytest.fixture(autouse=True)
def clean_build_env(monkeypatch):
    for name in BUILD_ENV:
        monkeypatch.delenv(name, raising=False)
    # setup.py sets TORCH_CUDA_ARCH_LIST itself; setenv first so that monkeypatch restores it
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")


def fake_toolkit(folder: Path, release: str) -> str:
    """A CUDA_HOME whose bin/nvcc answers --version like nvcc `release`."""
    nvcc = folder / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\n"
                    f"echo 'Cuda compilation tools, release {release}, V{release}.88'\n")
    nvcc.chmod(nvcc.stat().st_mode | stat.S_IXUSR)
    return str(folder)


@pytest.fixture
def cuda_torch(monkeypatch, tmp_path):
    """Makes this (CPU) torch look like torch's CUDA 13.0 wheel next to a CUDA 13.0 toolkit."""
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", fake_toolkit(tmp_path / "cuda", "13.0"))


# ---- the CUDA targets build_info() reports ---------------------------------------------------------

@pytest.mark.parametrize("arch_list, targets", [
    ("9.0", ["sm_90"]),
    ("9.0+PTX", ["sm_90", "compute_90"]),
    ("8.0;9.0+PTX", ["sm_80", "sm_90", "compute_90"]),
    ("Hopper", ["sm_90", "compute_90"]),
])
def test_recorded_targets_are_the_gencode_flags_passed(arch_list, targets):
    flags = setup_py._gencode_flags(arch_list)
    assert setup_py._cuda_targets(flags) == targets
    assert len(flags) == len(targets)


def test_cuda_targets_parse_both_gencode_forms_and_reject_others():
    assert setup_py._cuda_targets(["-gencode=arch=compute_90,code=[compute_90,sm_90]",
                                   "-gencode=arch=compute_80,code=sm_80"]) == ["sm_90", "sm_80", "compute_90"]
    with pytest.raises(ValueError, match="-arch=sm_90"):
        setup_py._cuda_targets(["-arch=sm_90"])


def test_targets_header_keeps_every_target_through_the_preprocessor(tmp_path):
    # nvcc splits -D values at commas (-DX=sm_90,compute_90 defines X as sm_90): the targets go
    # through a forced include instead, and kernels.cu stringifies the macro as below.
    header = tmp_path / setup_py.TARGETS_HEADER
    header.write_text(setup_py._targets_header(["sm_80", "sm_90", "compute_90"]))
    source = tmp_path / "probe.cu"
    source.write_text("#define STR_(...) #__VA_ARGS__\n#define STR(...) STR_(__VA_ARGS__)\n"
                      "const char* targets = STR(ADT_FAST_CUDA_ARCHS_TOKENS);\n")
    nvcc = shutil.which("nvcc")
    if nvcc:
        command = [nvcc, "-E", "--pre-include", str(header), str(source)]
    else:
        command = ["c++", "-E", "-x", "c++", "-include", str(header), str(source)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert 'const char* targets = "sm_80,sm_90,compute_90";' in output


def test_invalid_architecture_list_fails_naming_the_variable(cuda_torch, monkeypatch):
    monkeypatch.setenv("ADT_FAST_CUDA_ARCH", "9.0;sm_90")
    with pytest.raises(SystemExit, match=r"'9.0;sm_90' \(ADT_FAST_CUDA_ARCH\)"):
        setup_py._extension_setup()


# ---- when the CUDA kernels are skipped --------------------------------------------------------------

def test_why_no_cuda(tmp_path, monkeypatch):
    toolkit = fake_toolkit(tmp_path / "cuda12", "12.4")
    assert setup_py._why_no_cuda("12.1", toolkit) is None  # a minor difference is fine (torch warns)
    mismatch = setup_py._why_no_cuda("13.0", toolkit)
    assert "is 12.4 but torch was built with CUDA 13.0" in mismatch
    assert setup_py._why_no_cuda(None, toolkit) == "this torch has no CUDA support (torch.version.cuda is None)"
    assert setup_py._why_no_cuda("13.0", None) == "no CUDA toolkit found (set CUDA_HOME)"
    assert "nvcc not found at" in setup_py._why_no_cuda("13.0", str(tmp_path))
    broken = tmp_path / "broken"
    fake_toolkit(broken, "12.4")
    (broken / "bin" / "nvcc").write_text("#!/bin/sh\nexit 3\n")
    assert "cannot read the CUDA toolkit's version" in setup_py._why_no_cuda("12.4", str(broken))
    monkeypatch.setenv("ADT_FAST_NO_CUDA", "1")
    assert setup_py._why_no_cuda("12.4", toolkit) == "ADT_FAST_NO_CUDA=1"


def test_toolkit_mismatch_keeps_the_cpu_kernels_and_says_why(cuda_torch, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", fake_toolkit(tmp_path / "cuda12", "12.4"))
    (ext,), cmdclass = setup_py._extension_setup()
    assert ext.sources == setup_py.CPU_SOURCES
    assert "CPU kernels only: the CUDA toolkit at" in capsys.readouterr().err
    assert "build_ext" in cmdclass


def test_cuda_extension_when_toolkit_and_torch_agree(cuda_torch, capsys):
    (ext,), _ = setup_py._extension_setup()
    assert ext.sources == setup_py.CPU_SOURCES + setup_py.CUDA_SOURCES
    nvcc_flags = ext.extra_compile_args["nvcc"]
    assert "-gencode=arch=compute_90,code=sm_90" in nvcc_flags
    assert "-gencode=arch=compute_90,code=compute_90" in nvcc_flags  # the default is 9.0+PTX
    assert "-g0" not in nvcc_flags  # nvcc 13 rejects it
    assert "sm_90, compute_90 from '9.0+PTX'" in capsys.readouterr().err


# ---- ADT_FAST_REQUIRE_CUDA=1 --------------------------------------------------------------------------

@pytest.mark.parametrize("setting, reason", [
    ({"ADT_FAST_NO_CUDA": "1"}, "ADT_FAST_NO_CUDA=1"),
    ({"ADT_FAST_NO_EXTENSION": "1"}, "ADT_FAST_NO_EXTENSION=1"),
    ({}, "the CUDA toolkit at"),
])
def test_require_cuda_turns_a_skip_into_an_error(cuda_torch, monkeypatch, tmp_path, setting, reason):
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", fake_toolkit(tmp_path / "cuda12", "12.4"))
    for name, value in {"ADT_FAST_REQUIRE_CUDA": "1", **setting}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match="ADT_FAST_REQUIRE_CUDA=1, but the CUDA kernels are not built: "
                                         + reason):
        setup_py._extension_setup()


def test_require_cuda_with_a_cpu_torch(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setenv("ADT_FAST_REQUIRE_CUDA", "1")
    with pytest.raises(SystemExit, match="this torch has no CUDA support"):
        setup_py._extension_setup()


def _build_command(tmp_path, monkeypatch, fail_when):
    """setup.py's build_ext on a CUDA configuration, with torch's build replaced by a recorder that
    raises when `fail_when(extension)`; returns (command, [(sources, nvcc flags) of each build])."""
    ext_modules, cmdclass = setup_py._extension_setup()
    built = []

    def fake_build_extensions(self):
        ext = self.extensions[0]
        built.append((list(ext.sources), list(ext.extra_compile_args.get("nvcc", []))))
        if fail_when(ext):
            raise RuntimeError("nvcc fatal : Unknown option '-g0'")
        self.get_outputs()  # as setuptools does after a build: needs what finalize_options attached

    monkeypatch.setattr(cpp_extension.BuildExtension, "build_extensions", fake_build_extensions)
    from setuptools import Distribution
    command = cmdclass["build_ext"](Distribution({"name": "adt-fast", "ext_modules": ext_modules}))
    command.build_temp = str(tmp_path / "temp")
    command.build_lib = str(tmp_path / "lib")
    command.ensure_finalized()
    return command, built


def _has_cuda_sources(ext):
    return any(source.endswith(".cu") for source in ext.sources)


def test_failed_cuda_build_retries_with_the_cpu_kernels(cuda_torch, monkeypatch, tmp_path, capsys):
    command, built = _build_command(tmp_path, monkeypatch, _has_cuda_sources)
    command.build_extensions()
    (cuda_sources, nvcc_flags), (cpu_sources, _) = built
    assert cuda_sources == setup_py.CPU_SOURCES + setup_py.CUDA_SOURCES
    assert cpu_sources == setup_py.CPU_SOURCES
    header = Path(command.build_temp) / setup_py.TARGETS_HEADER
    assert header.read_text() == "#define ADT_FAST_CUDA_ARCHS_TOKENS sm_90,compute_90\n"
    assert nvcc_flags[-2:] == ["--pre-include", str(header)]
    assert "building the CUDA kernels failed (nvcc fatal : Unknown option '-g0')" in capsys.readouterr().err


def test_require_cuda_makes_a_failed_cuda_build_fail(cuda_torch, monkeypatch, tmp_path):
    monkeypatch.setenv("ADT_FAST_REQUIRE_CUDA", "1")
    command, built = _build_command(tmp_path, monkeypatch, _has_cuda_sources)
    with pytest.raises(SystemExit, match="not built: building it failed \\(nvcc fatal : Unknown option"):
        command.build_extensions()
    assert len(built) == 1


@pytest.mark.parametrize("require", [False, True])
def test_a_failed_build_is_recorded_unless_cuda_is_required(cuda_torch, monkeypatch, tmp_path, require):
    if require:
        monkeypatch.setenv("ADT_FAST_REQUIRE_CUDA", "1")
    command, _ = _build_command(tmp_path, monkeypatch, lambda ext: True)
    monkeypatch.setattr(cpp_extension.BuildExtension, "run", lambda self: self.build_extensions())
    record = Path(command.build_lib) / "adt_fast" / setup_py.BUILD_ERROR_FILE
    if require:
        with pytest.raises(SystemExit, match="ADT_FAST_REQUIRE_CUDA=1"):
            command.run()
        assert not record.exists()
    else:
        command.run()  # the package installs without the extension
        assert "Unknown option '-g0'" in record.read_text()


# ---- the sdist ------------------------------------------------------------------------------------

INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def quoted_includes(sources, include_dirs):
    """Every file that `sources` #include "..." transitively (whatever #if guards them), as paths
    relative to ROOT. Resolved as the compiler does: next to the including file, then in
    `include_dirs`; one found in neither fails, naming the file that includes it."""
    found, pending = set(), [ROOT / source for source in sources]
    while pending:
        including = pending.pop()
        for name in INCLUDE.findall(including.read_text()):
            candidates = [including.parent / name, *(ROOT / folder / name for folder in include_dirs)]
            path = next((c.resolve() for c in candidates if c.is_file()), None)
            assert path is not None, f"{including.relative_to(ROOT)} includes {name!r}, found nowhere"
            if path not in found:
                found.add(path)
                pending.append(path)
    return {path.relative_to(ROOT).as_posix() for path in found}


@pytest.fixture(scope="module")
def sdist_files(tmp_path_factory):
    """The files of an sdist built from this tree, relative to its top folder. ADT_FAST_NO_EXTENSION=1
    (no torch import, and no sources added by the extension's configuration): everything comes
    from MANIFEST.in. The egg-info goes to a fresh folder, since setuptools keeps whatever an
    existing SOURCES.txt lists."""
    out = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(out),
                    "sdist", "--formats=tar", "--dist-dir", str(out)],
                   cwd=ROOT, env={**os.environ, "ADT_FAST_NO_EXTENSION": "1"},
                   check=True, capture_output=True)
    (archive,) = out.glob("*.tar")
    with tarfile.open(archive) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_quoted_includes_follow_relative_and_include_dir_paths():
    assert quoted_includes(["csrc/cpu/kernels_avx2.cpp"], ["csrc"]) >= {
        "csrc/cpu/kernels_impl.h", "csrc/cpu/kernels.h", "csrc/core/philox.h", "csrc/core/common.h"}
    assert "csrc/cuda/adt_cuda.h" in quoted_includes(["csrc/binding.cpp"], ["csrc"])  # under #ifdef


def test_sdist_holds_what_building_and_testing_need(sdist_files):
    sources = setup_py.CPU_SOURCES + setup_py.CUDA_SOURCES
    needed = set(sources) | quoted_includes(sources, ["csrc"])
    needed |= {"CMakeLists.txt", "Makefile", "scripts/setup.sh", "MANIFEST.in"}
    for folder in ("csrc", "tests"):  # the C++ tests and the pytest helpers (conftest.py, workers)
        needed |= {path.relative_to(ROOT).as_posix() for path in (ROOT / folder).rglob("*")
                   if path.is_file() and "__pycache__" not in path.parts}
    assert needed - sdist_files == set()
    assert not {name for name in sdist_files if name.endswith((".so", ".pyc", "_C_build_error.txt"))}


# ---- the version ----------------------------------------------------------------------------------

def test_one_version_everywhere(capsys):
    """adt_fast.__version__ (reports record it) is pyproject.toml's, which setup.py reads too, and
    `adt-fast --version` prints it."""
    import adt_fast
    from adt_fast.cli import main

    assert adt_fast.__version__ == setup_py.VERSION
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"adt-fast {setup_py.VERSION}\n"


# ---- ADT_FAST_REQUIRE_EXTENSION=1 (tests/conftest.py) -----------------------------------------------

@pytest.mark.parametrize("require", ["1", "0"])
def test_require_extension_stops_a_test_run_without_the_cpu_backend(require):
    # A fresh pytest in which importing adt_fast._C fails, as where it did not build
    code = ("import sys; sys.modules['adt_fast._C'] = None; import pytest; "
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--collect-only', "
            "'tests/test_build.py::test_one_version_everywhere']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "ADT_FAST_REQUIRE_EXTENSION": require})
    if require == "1":
        assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
        assert ("ADT_FAST_REQUIRE_EXTENSION=1, but the cpu backend is unavailable: the C++ extension "
                "adt_fast._C is not built") in result.stderr
    else:  # the pure-Python tests still run
        assert result.returncode == 0, result.stdout + result.stderr
