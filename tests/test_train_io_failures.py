"""Training when the system itself refuses: a write the kernel stops (a file size limit, as a full
disk does), a SIGTERM. Each runs the real command in a child process, with no mocks."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

from adt_fast.cli import main
from adt_fast.train import checkpoint as ckpt

from conftest import adt_fast_env

TINY = ["--method", "standard", "--dataset", "synthetic", "--max-batches", "1", "--batch-size", "16",
        "--no-tensorboard"]
# Room for config.json and the other small files, not for a checkpoint of synthetic's small-cnn.
FILE_SIZE_LIMIT = 20_000


def _limit_file_size():
    """In the child: writes past FILE_SIZE_LIMIT fail with EFBIG instead of killing it (SIGXFSZ)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


def test_a_checkpoint_write_the_system_refuses_says_what_was_kept(tmp_path):
    """torch's zip writer hides the OSError of a refused write behind a RuntimeError ('unexpected
    pos'); the run must still end in the one-line --out error with the checkpoint it kept."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert (out / ckpt.LATEST).stat().st_size > FILE_SIZE_LIMIT
    kept = (out / ckpt.LATEST).read_bytes()
    done = subprocess.run([sys.executable, "-m", "adt_fast", "train", "--resume", "--epochs", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"adt-fast train: error: --out {out}: cannot write the run there (File too "
                                   f"large); {out / ckpt.LATEST} (the last completed epoch) is intact; continue "
                                   f"with: adt-fast train --resume --out {out}")
    assert (out / ckpt.LATEST).read_bytes() == kept
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert main(["train", "--resume", "--epochs", "2", "--out", str(out)]) == 0
    assert ckpt.load(out)["epoch"] == 2


def _sigterm_after(argv, line: str, cwd=None):
    """Run `adt-fast ARGV` in a child and SIGTERM it once its stdout printed `line`; (code, stderr)."""
    child = subprocess.Popen([sys.executable, "-m", "adt_fast", *argv], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=cwd, env=adt_fast_env())
    try:
        for printed in child.stdout:
            if printed.startswith(line):
                child.send_signal(signal.SIGTERM)
                break
        child.stdout.read()
        return child.wait(timeout=300), child.stderr.read()
    finally:
        child.kill()


def test_sigterm_ends_train_as_ctrl_c_does_with_exit_code_143(tmp_path):
    """scancel, docker stop and torchrun (stopping the other workers when one fails) send SIGTERM."""
    out = tmp_path / "run"
    code, err = _sigterm_after(["train", *TINY, "--epochs", "100000", "--out", str(out)], "epoch 2/")
    assert code == 128 + signal.SIGTERM, err
    assert err.strip() == (f"adt-fast train: stopped by SIGTERM: {out / ckpt.LATEST} (the last completed epoch) "
                           f"is intact; continue with: adt-fast train --resume --out {out}")
    assert ckpt.load(out)["epoch"] >= 2


def test_sigterm_while_importing_the_arch_module_is_reported_too(tmp_path):
    """The handler is in place before your --arch module is imported (a slow import: a large
    framework, a network file system), not only once training runs."""
    (tmp_path / "slow_import.py").write_text("import time\nprint('importing', flush=True)\ntime.sleep(300)\n")
    out = tmp_path / "run"
    code, err = _sigterm_after(["train", *TINY, "--arch", "slow_import:build", "--out", str(out)], "importing",
                               cwd=tmp_path)
    assert code == 128 + signal.SIGTERM, err
    assert err.strip() == "adt-fast train: stopped by SIGTERM before the run started; nothing was written"
    assert not out.exists()


def test_the_sigterm_handler_is_the_commands_alone_and_put_back_after(tmp_path, monkeypatch):
    """fit from a program keeps the program's SIGTERM handler; the command restores it when it ends."""
    from adt_fast.train import TrainConfig, fit, loop

    seen = []
    build = loop.build_trainer

    def spy(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGTERM))
        return build(*args, **kwargs)

    monkeypatch.setattr(loop, "build_trainer", spy)
    before = signal.getsignal(signal.SIGTERM)
    fit(TrainConfig("standard", "synthetic", str(tmp_path / "lib"), epochs=1, max_batches=1, tensorboard=False))
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "cli")]) == 0
    assert seen[0] is before and seen[1] is not before
    assert signal.getsignal(signal.SIGTERM) is before
