"""A path written into a command adt_fast prints (files.shell_path) reads back as that path when
the command is run: a relative one that starts with '-' as ./-name, which argparse would take for
an option."""

import shlex

import pytest

import external_models
from adt_fast.cli import build_parser, main
from adt_fast.files import shell_path
from adt_fast.train import checkpoint as ckpt

BUILT_BY = "external_models:build"
RENAMED = "external_models:build_per_process"     # the same network under another name


@pytest.mark.parametrize("path, word", [("-dash", "./-dash"), ("with space", "'with space'"), ("/abs/-x", "/abs/-x"),
                                        ("plain", "plain")])
def test_shell_path_is_one_word_that_is_no_option(path, word):
    assert shell_path(path) == word


def test_the_wrong_factory_message_names_weights_in_a_run_folder_that_starts_with_a_dash(tmp_path, monkeypatch):
    """It printed --weights -dash/model.pt, which argparse takes for an option."""
    monkeypatch.chdir(tmp_path)
    model = external_models.build()
    ckpt.save_atomic({"model_config": {"arch": BUILT_BY, "num_classes": 10, "in_channels": 3, "image_size": 8},
                      "model": model.state_dict()}, tmp_path / "-dash" / ckpt.FINAL_MODEL)
    with pytest.raises(ckpt.WrongFactory) as refused:
        ckpt.load_model("-dash", factory=RENAMED)
    command = shlex.split(str(refused.value).split("load the weights into yours: ", 1)[1].rstrip(")"))
    assert build_parser().parse_args([*command, "--out", "report.json"]).weights == "./-dash/model.pt"
    assert main([*command, "--dataset", "synthetic", "--attacks", "fgsm", "--n-examples", "4", "--epsilon-curve", "",
                 "--device", "cpu", "--out", "report.json"]) == 0
