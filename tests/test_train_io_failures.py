"""Training when the system itself refuses: a write the kernel stops (a file size limit, as a full
disk does), a SIGTERM. Each runs the real command in a child process, with no mocks."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from pathlib import Path

from adt_fast.cli import main
from adt_fast.train import checkpoint as ckpt

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
