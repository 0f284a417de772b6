"""adt_fast/train/tuning.py against its docstrings, driving load_or_measure with a stand-in method.
The repo's conftest makes time_memory_formats report contiguous as the faster format."""
import json

import torch

from adt_fast.train import tuning
from adt_fast.train.methods import Runtime


class _Method:
    def __init__(self):
        self.runtime = Runtime()
        self.seen_recorded, self.applied = None, None

    def tune(self, model, x, y, recorded=None):
        self.seen_recorded = recorded
        return {"samples_per_pass": (recorded or {}).get("samples_per_pass", 1), "chosen_by": "measurement"}

    def apply_tuning(self, t):
        self.applied = t


def _setup(tmp_path, record):
    (tmp_path / tuning.TUNING_FILE).write_text(json.dumps(record))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    model(x)
    return model, x, y


RECORD = {"samples_per_pass": 3, "chosen_by": "measurement",
          tuning.MEMORY_FORMAT: {"channels_last": True, "chosen_by": "measurement"}}


def test_a_fresh_run_ignores_a_tuning_file_it_finds(tmp_path):
    """Docstring: 'on resume, the recorded choice; else a fresh measurement'."""
    model, x, y = _setup(tmp_path, RECORD)
    method = _Method()
    out = tuning.load_or_measure(tmp_path, method, model, x, y, channels_last="auto", resume=False)
    assert out[tuning.MEMORY_FORMAT]["channels_last"] is False
    assert out[tuning.MEMORY_FORMAT]["chosen_by"] == "measurement"
    assert not method.seen_recorded


def test_a_resume_passes_the_method_its_own_record_and_reuses_the_format(tmp_path):
    model, x, y = _setup(tmp_path, RECORD)
    method = _Method()
    out = tuning.load_or_measure(tmp_path, method, model, x, y, channels_last="auto", resume=True)
    assert method.seen_recorded == {"samples_per_pass": 3, "chosen_by": "measurement"}
    assert out == RECORD and method.applied == RECORD
    assert method.runtime.channels_last is True
    assert json.loads((tmp_path / tuning.TUNING_FILE).read_text()) == RECORD


def test_a_tuning_file_that_is_not_utf8_is_measured_again(tmp_path):
    """_read: an unreadable file is measured again rather than trusted (or crashing the resume)."""
    model, x, y = _setup(tmp_path, {})
    (tmp_path / tuning.TUNING_FILE).write_bytes(b"\xff\xfe\x00garbage")
    out = tuning.load_or_measure(tmp_path, _Method(), model, x, y, channels_last="auto", resume=True)
    assert out[tuning.MEMORY_FORMAT]["chosen_by"] == "measurement"


def test_a_record_without_chosen_by_is_measured_again(tmp_path):
    model, x, y = _setup(tmp_path, {tuning.MEMORY_FORMAT: {"channels_last": True}})
    out = tuning.load_or_measure(tmp_path, _Method(), model, x, y, channels_last="auto", resume=True)
    assert out[tuning.MEMORY_FORMAT]["chosen_by"] == "measurement"
    assert out[tuning.MEMORY_FORMAT]["channels_last"] is False


def test_a_tuning_file_holding_a_list_is_measured_again(tmp_path):
    model, x, y = _setup(tmp_path, [1, 2])
    out = tuning.load_or_measure(tmp_path, _Method(), model, x, y, channels_last="auto", resume=True)
    assert out[tuning.MEMORY_FORMAT]["chosen_by"] == "measurement"


def test_other_ranks_apply_rank_0s_memory_format(tmp_path):
    """Module docstring: rank 0 makes every choice and the other ranks take it (DDP needs one
    memory format on every rank). A non-main rank writes nothing and measures nothing."""
    from adt_fast.distributed import World

    class Rank1(World):
        def broadcast(self, value):
            assert value is None
            return RECORD

    model, x, y = _setup(tmp_path, {})
    (tmp_path / tuning.TUNING_FILE).unlink()
    method = _Method()
    out = tuning.load_or_measure(tmp_path, method, model, x, y, channels_last="auto", resume=False,
                                 world=Rank1(rank=1, size=2))
    assert out == RECORD and method.applied == RECORD and not (tmp_path / tuning.TUNING_FILE).exists()
    assert method.runtime.channels_last is True
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_mode_line_pluralises_samples_per_pass():
    from types import SimpleNamespace

    cfg = SimpleNamespace(precision="fp32", device="cpu", samples=8, batch_size=4)
    memory = {"channels_last": False, "chosen_by": "--no-channels-last"}
    for per_pass, words in ((1, "passes of 1 sample,"), (2, "passes of 2 samples,"), (8, "passes of 8 samples,")):
        line = tuning.mode_line(cfg, {"samples_per_pass": per_pass, "chosen_by": "measurement",
                                      tuning.MEMORY_FORMAT: memory}, 4)
        assert words in line, line
