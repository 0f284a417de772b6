import functools
import hashlib
import http.server
import os
import threading

import pytest

# Without a GPU, the Triton backend runs on CPU tensors through Triton's interpreter; the flag
# must be set before triton is first imported.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass

os.environ.setdefault("ADT_FAST_NO_PROGRESS", "1")

# The test models are tiny: one intra-op thread is faster than two and steadier on a shared box.
torch.set_num_threads(1)

REQUIRE_EXTENSION_ENV = "ADT_FAST_REQUIRE_EXTENSION"

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def adt_fast_env(drop=()) -> dict:
    """The environment of a `python -m adt_fast` child: this checkout first on its path, which a
    child run in another folder (tmp_path) would otherwise not test (it would import whatever
    adt_fast is installed), and no progress bars; without the variables named in `drop`."""
    env = {name: value for name, value in os.environ.items() if name not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [CHECKOUT, env.get("PYTHONPATH")]))
    env["ADT_FAST_NO_PROGRESS"] = "1"
    return env


def returns_in_time(path, call):
    """Run ``call`` in a thread; if it blocks opening the FIFO ``path``, unblock it by opening the
    other end, so a failing test does not hang. Returns what it raised, or None if it blocked."""
    outcome = {}

    def target():
        try:
            call()
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(10)
        return None
    return outcome.get("error")


def publish(monkeypatch, path: str, body: bytes) -> None:
    """Make ``body`` the published file at ``path`` (a Resource.path) for this test: its MD5 sum
    and its size, so a server or mirror serving ``body`` there passes both checks."""
    from adt_fast.data import fetch

    monkeypatch.setitem(fetch.PUBLISHED, path, fetch.Published(hashlib.md5(body).hexdigest(), len(body)))


def pytest_configure(config):
    """With ADT_FAST_REQUIRE_EXTENSION=1 (CI) a run without the cpu backend stops at once: every
    test of the C++ kernels would skip and the run pass. Without it, such a run (a platform the
    extension does not build on) still tests the pure-Python code."""
    if os.environ.get(REQUIRE_EXTENSION_ENV, "0").strip().lower() not in ("1", "true", "yes", "on"):
        return
    import adt_fast

    cpu = {status.name: status for status in adt_fast.backends()}["cpu"]
    if not cpu.available:
        raise pytest.UsageError(f"{REQUIRE_EXTENSION_ENV}=1, but the cpu backend is unavailable: {cpu.reason}")


@pytest.fixture
def file_server(tmp_path):
    """Serves tmp_path/served over HTTP on 127.0.0.1; yields (folder, base_url)."""
    served = tmp_path / "served"
    served.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def steady_memory_format(monkeypatch):
    """Tests compare separate runs bit for bit, and timing the tiny test models would pick either
    memory format by noise (channels_last changes float32 results in the last bits): here every
    run measures contiguous as the faster. The fixture's value is the real timing, for the tests
    of the measurement itself."""
    from adt_fast.train import tuning

    real = tuning.time_memory_formats
    monkeypatch.setattr(tuning, "time_memory_formats",
                        lambda *args, **kwargs: {"contiguous": 0.001, "channels_last": 0.002})
    yield real


@pytest.fixture
def stop_after_epoch(monkeypatch):
    """stop_after_epoch(n): a Ctrl-C as epoch n + 1 starts, once n epochs are checkpointed."""
    from adt_fast.train import loop

    trained = loop.Trainer.train_epoch

    def arm(epoch: int) -> None:
        def train_epoch(self):
            if self.epoch == epoch:
                raise KeyboardInterrupt
            return trained(self)
        monkeypatch.setattr(loop.Trainer, "train_epoch", train_epoch)
    return arm
