"""Data-parallel training and sharded evaluation under torchrun (gloo, CPU, 2 processes).

Every launch goes through `python -m torch.distributed.run` on 127.0.0.1 with a free port and a
timeout; the runs are tiny (synthetic data, a few steps) so that each launch takes seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from adt_fast import data as datasets
from adt_fast import distributed, files
from adt_fast.amortized import Q_LR
from adt_fast.distributed import BatchShard, World
from adt_fast.ops import sample_and_entropy
from adt_fast.ops.sample_and_entropy import draw_normals
from adt_fast.train import ConfigError, TrainConfig, fit, read_metrics
from adt_fast.train import loop
from adt_fast.train.checkpoint import load

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import FAILURE, METHODS, OTHER_METHODS, VARIANTS, small_config, sync_bn_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "distributed_worker.py"
LAUNCH_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, nodes: int = 1, extra: tuple = (), ok: bool = True,
             join_when=None) -> subprocess.CompletedProcess:
    """`nodes` torchrun agents started at once with the same line, each with `nproc` processes:
    with more than one they rendezvous by id as on that many machines (each rank's LOCAL_RANK
    counts on its own node). The result holds the agents' output one after the other.

    join_when(stderr): the first agent starts alone in an elastic job of 1 to `nodes` nodes, and
    the others join it once its stderr so far makes join_when true."""
    port = free_port()
    sizes = f"1:{nodes}" if join_when else str(nodes)
    several = ("--nnodes", sizes, "--rdzv-id", f"adt_fast_test_{port}") if nodes > 1 else ()
    if join_when:  # the first agent waits this long for others before it starts alone (30 s by default)
        several += ("--rdzv-conf", "last_call_timeout=1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", *several, *extra, *args]
    # torchrun leaves a torchelastic_* log folder in the temporary directory after every launch.
    with tempfile.TemporaryDirectory(prefix="adt_fast_torchrun_") as scratch:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ADT_FAST_NO_PROGRESS": "1",
               "ADT_FAST_DIST_TIMEOUT": "120", "TMPDIR": scratch,
               # a node joining gets through torchrun's rendezvous only with this (docs/distributed.md)
               **({"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if join_when else {})}
        logs = [(Path(scratch, f"node{node}.out"), Path(scratch, f"node{node}.err")) for node in range(nodes)]
        agents = []
        try:
            for out, err in logs:  # files, not pipes: an agent whose pipe is full would stall the others
                if agents and join_when:
                    _wait_for(lambda: join_when(logs[0][1].read_text()) or agents[0].poll() is not None)
                with out.open("w") as stdout, err.open("w") as stderr:
                    agents.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr))
            codes = [agent.wait(timeout=LAUNCH_TIMEOUT_S) for agent in agents]
        finally:
            for agent in agents:
                agent.kill()  # after a timeout; an agent that ended is left as it is
                agent.wait()
        stdout, stderr = ("".join(path.read_text() for path in paths) for paths in zip(*logs))
    result = subprocess.CompletedProcess(command, next((code for code in codes if code), 0), stdout, stderr)
    assert all((code == 0) == ok for code in codes), stdout[-3000:] + stderr[-6000:]
    return result


def _wait_for(condition, limit_s: float = LAUNCH_TIMEOUT_S) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"not met within {limit_s} s"
        time.sleep(0.1)


def assert_same_run(parallel: Path, single: Path, epochs=None) -> None:
    """Metrics and final weights of two runs agree to float32 reduction-order tolerance."""
    a, b = read_metrics(parallel), read_metrics(single)
    if epochs is not None:
        a, b = a[:epochs], b[:epochs]
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
    for mine, theirs in zip(a, b):
        for key in ("train_loss", "train_acc", "test_acc", "lr"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-5), (key, mine, theirs)


def assert_same_weights(parallel: dict, single: dict, atol: float = 1e-5) -> None:
    assert parallel.keys() == single.keys()
    for name in parallel:
        torch.testing.assert_close(parallel[name].float(), single[name].float(), rtol=1e-4, atol=atol,
                                   msg=lambda m: f"{name}: {m}")


# ------------------------------------------------------------------------------------------------
# launched: training, elastic restart, evaluation
# ------------------------------------------------------------------------------------------------
def test_your_own_model_with_parameters_its_forward_never_uses_trains_under_torchrun(tmp_path):
    """DDP refuses such a model ("Expected to have finished reduction") unless it looks for unused
    parameters, which it does for --arch MODULE:FACTORY."""
    torchrun("-m", "adt_fast", "train", "--method", "standard", "--arch", "tests.external_models:Unused",
             "--dataset", "synthetic", "--epochs", "1", "--max-batches", "2", "--batch-size", "16", "--device",
             "cpu", "--no-tensorboard", "--out", str(tmp_path / "run"))
    assert (tmp_path / "run" / "model.pt").is_file()


def test_two_processes_train_as_one(tmp_path):
    """Same global batch and seed, --sync-bn: 2 ranks give 1 process's losses and weights."""
    torchrun(str(WORKER), "methods", str(tmp_path / "parallel"))
    for method in METHODS:
        single = fit(small_config(method, tmp_path / "single" / method))
        parallel = tmp_path / "parallel" / method
        assert_same_run(parallel, single)
        theirs, ours = load(single / "model.pt"), load(parallel / "model.pt")
        assert_same_weights(ours["model"], theirs["model"])
        assert json.loads((parallel / "config.json").read_text())["sync_bn"] is True
        if method == "adt-exp-am":  # the generator's gradients are all-reduced too
            ckpt_ours, ckpt_theirs = load(parallel / "checkpoint.pt"), load(single / "checkpoint.pt")
            assert_same_weights(ckpt_ours["modules"]["generator"], ckpt_theirs["modules"]["generator"])


def test_cpu_sync_batchnorm_is_batchnorm_over_the_global_batch_also_under_bf16_autocast(tmp_path):
    """Each rank's share of the output and of the input gradient, and the running statistics, are
    those of one BatchNorm over the whole batch; under bf16 autocast too (its statistics once
    stayed in bfloat16 and the running-statistics update failed on the float32 buffers)."""
    torchrun(str(WORKER), "sync-bn", str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    x, affine, loss_weights = sync_bn_batch()
    for dtype, tol in ((torch.float32, dict(rtol=1e-5, atol=1e-5)), (torch.bfloat16, dict(rtol=2e-2, atol=4e-2))):
        layer = nn.BatchNorm2d(3)
        with torch.no_grad():
            layer.weight.copy_(affine[0])
            layer.bias.copy_(affine[1])
        batch = x.to(dtype).float().clone().requires_grad_(True)  # the same values, statistics in float32
        y = layer(batch)
        (y * loss_weights).sum().backward()
        got = [r[str(dtype)] for r in ranks]
        assert all(g["out"].dtype == dtype for g in got)
        torch.testing.assert_close(torch.cat([g["out"].float() for g in got]), y.detach(), **tol)
        torch.testing.assert_close(torch.cat([g["grad"].float() for g in got]), batch.grad, **tol)
        for g in got:
            torch.testing.assert_close(g["running_mean"], layer.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g["running_var"], layer.running_var, rtol=1e-5, atol=1e-6)


def test_rank_0_chooses_the_memory_format_for_every_rank(tmp_path):
    """Rank 0 measures (the worker fails any other rank that does), every rank trains in its
    choice, channels_last here, and DDP's buckets follow: the result is one process's in
    channels_last. (ADT_EXP-AM is left out: its generator's Adam turns the last-bit differences
    of channels_last kernels on other batch sizes into differences of the order of its lr.)"""
    methods = ("standard", "adt-exp")
    torchrun(str(WORKER), "methods-channels-last", str(tmp_path / "parallel"), *methods)
    for method in methods:
        parallel = tmp_path / "parallel" / method
        assert json.loads((parallel / "tuning.json").read_text())["memory_format"] == {
            "channels_last": True, "chosen_by": "measurement", "seconds": {"contiguous": 2.0, "channels_last": 1.0}}
        single = fit(small_config(method, tmp_path / "single" / method, channels_last=True))
        assert_same_run(parallel, single)
        assert_same_weights(load(parallel / "model.pt")["model"], load(single / "model.pt")["model"])


def test_every_other_method_runs_under_torchrun(tmp_path):
    """TRADES (two train-mode forwards), ADT_IMP-AM (generator and q), AT-FGSM, ALP, L2L."""
    torchrun(str(WORKER), "methods", str(tmp_path / "parallel"), *OTHER_METHODS)
    for method in OTHER_METHODS:
        parallel = tmp_path / "parallel" / method
        assert [r["epoch"] for r in read_metrics(parallel)] == [1, 2]
        assert_same_run(parallel, fit(small_config(method, tmp_path / "single" / method)))


def test_adt_imp_am_without_entropy_and_with_an_active_hinge_trains_as_one_process(tmp_path):
    """lambda 0 (also as --loss trades --beta 0 --beta-scales-entropy) once crashed DDP: the
    entropy term was dropped and q had no gradient. Its q must stay as initialised. A hinge that
    is active on the global batch but not on every rank's share (or the reverse) once acted on
    each rank's mean; it acts on the global batch's: classifier, generator and q are one
    process's (with per-rank means, the classifier differs by up to 4% and almost all
    of the generator's and q's weights by over 1e-5).

    q's weights are compared to one Adam step (lr 2e-4): of its ~7e5 weights a few have gradients
    near zero, whose sign the reduction order can flip, and Adam moves them by up to lr either way
    (seen: 3 weights, by 6e-5)."""
    torchrun(str(WORKER), "methods", str(tmp_path / "parallel"), *VARIANTS)
    for variant in VARIANTS:
        parallel = tmp_path / "parallel" / variant
        single = fit(small_config(variant, tmp_path / "single" / variant))
        assert_same_run(parallel, single)
        assert_same_weights(load(parallel / "model.pt")["model"], load(single / "model.pt")["model"])
        ours, theirs = load(parallel / "checkpoint.pt")["modules"], load(single / "checkpoint.pt")["modules"]
        assert_same_weights(ours["generator"], theirs["generator"])
        assert_same_weights(ours["q"], theirs["q"], atol=Q_LR)
        if variant != "adt-imp-am-hinge1.2":  # q's weights as built (its BatchNorm statistics move)
            q = loop.build_trainer(small_config(variant, tmp_path / "init" / variant).resolve(),
                                   datasets.open_dataset("synthetic")).method.modules()["q"]
            for name, value in q.named_parameters():
                assert torch.equal(ours["q"][name], value) and torch.equal(theirs["q"][name], value), name


def test_killed_worker_restarts_and_resumes_then_continues_on_one_process(tmp_path):
    run = tmp_path / "run"
    argv = ["--method", "at-pgd", "--dataset", "synthetic", "--out", str(run), "--epochs", "3",
            "--max-batches", "3", "--batch-size", "16", "--lr-drop", "--steps", "2", "--no-tensorboard",
            "--sync-bn", "--device", "cpu"]
    # rank 1 dies in epoch 2 (after 4 steps) of the first attempt
    result = torchrun(str(WORKER), "kill-after", "4", "--", *argv, extra=("--max-restarts", "1"))
    assert f"resuming {run} after epoch 1/3 on 2 processes" in result.stdout
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3]
    single = fit(small_config("at-pgd", tmp_path / "single", epochs=4, max_batches=3))
    assert_same_run(run, single, epochs=3)

    # the 2-process run continues on 1 process
    fit(dataclasses.replace(TrainConfig.load(run), resume=True, epochs=4))
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3, 4]
    assert_same_run(run, single)
    assert_same_weights(load(run / "model.pt")["model"], load(single / "model.pt")["model"])


def test_two_nodes_resume_when_only_the_failed_nodes_restart_count_goes_up(tmp_path):
    """Rank 1's worker dies while rank 0's still runs: torchrun restarts rank 1's node with restart
    count 1 and rank 0's as a membership change, count 0. The ranks once keyed the group by their
    own counts (gloo could not connect) and rank 0 took its 0 for a first attempt and refused the
    run's --out: the job failed under --max-restarts 1. It resumes as one run."""
    run = tmp_path / "run"
    argv = ["--method", "at-pgd", "--dataset", "synthetic", "--out", str(run), "--epochs", "3",
            "--max-batches", "3", "--batch-size", "16", "--lr-drop", "--steps", "2", "--no-tensorboard",
            "--sync-bn", "--device", "cpu"]
    result = torchrun(str(WORKER), "kill-alone-after", "4", "--", *argv, nproc=1, nodes=2,
                      extra=("--max-restarts", "1"))
    starts = sorted(line for line in result.stderr.splitlines() if re.fullmatch(r"rank \d, restart count \d+", line))
    # two attempts, the second after a membership change on rank 0's node (no third, which a
    # failure on the restart would need: rank 0's node then restarts with count 1)
    assert starts == ["rank 0, restart count 0"] * 2 + ["rank 1, restart count 0", "rank 1, restart count 1"], starts
    assert f"resuming {run} after epoch 1/3 on 2 processes" in result.stdout
    single = fit(small_config("at-pgd", tmp_path / "single", epochs=3, max_batches=3))
    assert_same_run(run, single)
    assert_same_weights(load(run / "model.pt")["model"], load(single / "model.pt")["model"])


def test_a_node_joining_the_job_costs_one_attempt_then_the_run_goes_on_on_both_nodes(tmp_path):
    """A second node joins an elastic job (--nnodes 1:2) in epoch 2, as docs/distributed.md
    describes: torchrun restarts the first node's workers as a change of membership, and every
    restart count stays 0, so that attempt cannot tell itself from the job's first: it refuses the
    run's --out, a failure that counts. The next attempt (counts 1) resumes the run on two
    processes, which ends as one uninterrupted process would."""
    run = tmp_path / "run"
    argv = ["--method", "at-pgd", "--dataset", "synthetic", "--out", str(run), "--epochs", "3",
            "--max-batches", "3", "--batch-size", "16", "--lr-drop", "--steps", "2", "--no-tensorboard",
            "--sync-bn", "--device", "cpu"]
    result = torchrun(str(WORKER), "wait-for-a-node-after", "4", "--", *argv, nproc=1, nodes=2,
                      extra=("--max-restarts", "1"), join_when=lambda stderr: "waiting for a node" in stderr)
    starts = sorted(line for line in result.stderr.splitlines() if re.fullmatch(r"rank \d, restart count \d+", line))
    assert starts == ["rank 0, restart count 0"] * 2 + ["rank 0, restart count 1",
                                                        "rank 1, restart count 0", "rank 1, restart count 1"], starts
    assert f"--out {run} is not empty; it holds a run" in result.stderr
    assert f"resuming {run} after epoch 1/3 on 2 processes" in result.stdout
    single = fit(small_config("at-pgd", tmp_path / "single", epochs=3, max_batches=3))
    assert_same_run(run, single)
    assert_same_weights(load(run / "model.pt")["model"], load(single / "model.pt")["model"])


@pytest.mark.parametrize("command", ["train", "eval"])
def test_ranks_started_with_other_settings_refuse_the_job_before_any_write(tmp_path, command):
    """Nodes given different lines (or software, data, checkpoints): another --seed on rank 1 once
    trained silently, each rank on its own permutation of the data (another --epochs waited out
    $ADT_FAST_DIST_TIMEOUT for a collective that never came), and made a report of the ranks'
    different random starts."""
    argv = {"train": ["--method", "standard", "--epochs", "1", "--max-batches", "2", "--batch-size", "16",
                      "--no-tensorboard"],
            "eval": ["--model", "tests.external_models:build", "--n-examples", "16", "--batch-size", "8",
                     "--attacks", "pgd:2", "--epsilon-curve", ""]}[command]
    out = tmp_path / "out"
    result = torchrun(str(WORKER), "rank-1-adds", "--seed", "1", "--", command, *argv, "--dataset", "synthetic",
                      "--device", "cpu", "--out", str(out / "r.json" if command == "eval" else out), ok=False)
    refusal = f"adt-fast {command}: error: rank 1's settings differ from rank 0's: seed 1 (rank 0: 0); start every"
    # Each rank says it, unless torchrun stops the other first, when one ends: one or two lines.
    assert result.stderr.count(refusal) in (1, 2), result.stderr[-3000:]
    assert not out.exists() or not any(out.iterdir())


def test_ranks_whose_model_factory_gives_other_weights_refuse_to_attack(tmp_path):
    """A --model factory that initialises from the clock or numpy (here the process id) built
    another model on each rank, and the report merged their scores, silently."""
    out = tmp_path / "out" / "r.json"
    result = torchrun("-m", "adt_fast", "eval", "--model", "tests.external_models:build_per_process",
                      "--dataset", "synthetic", "--n-examples", "16", "--batch-size", "8", "--attacks", "fgsm",
                      "--epsilon-curve", "", "--device", "cpu", "--out", str(out), ok=False)
    assert "adt-fast eval: error: rank 1's settings differ from rank 0's: model's state sha256 '" in result.stderr
    assert not out.exists()


def test_state_digest_follows_every_value_of_any_layout_and_dtype():
    """The digest the ranks compare: equal for equal states, other for one changed value, and
    sparse, bool and bfloat16 buffers taken as they are, with a module's non-tensor extra state."""
    from adt_fast.attacks.command import _state_digest

    class Extra(nn.Sequential):
        def get_extra_state(self):
            return {"note": "not a tensor"}

        def set_extra_state(self, state):
            pass

    model = Extra(nn.Linear(3, 2), nn.BatchNorm1d(2))
    model.register_buffer("sparse", torch.eye(3).to_sparse())
    model.register_buffer("flag", torch.tensor(True))
    model.register_buffer("bf16", torch.ones(2, dtype=torch.bfloat16))
    twin = copy.deepcopy(model)
    assert _state_digest(twin) == _state_digest(model)
    twin.sparse = torch.eye(3).mul(2).to_sparse()
    assert _state_digest(twin) != _state_digest(model)
    for name, other in (("flag", torch.tensor(False)), ("bf16", torch.full((2,), 2.0, dtype=torch.bfloat16))):
        twin = copy.deepcopy(model)
        setattr(twin, name, other)
        assert _state_digest(twin) != _state_digest(model), name


def test_a_failing_worker_ends_the_run_with_its_reason(tmp_path):
    """Rank 1 raises: the run ends with its error, and rank 0, stopped by torchrun or failing in its
    next collective (test_a_rank_whose_collective_fails_says_so_in_one_line pins that line), prints
    no traceback of its own, which would read as a second failure, and ends without torchrun
    having to kill it. --tee labels each rank's lines."""
    argv = ["--method", "standard", "--dataset", "synthetic", "--out", str(tmp_path / "run"), "--epochs", "2",
            "--batch-size", "16", "--no-tensorboard", "--device", "cpu"]
    result = torchrun(str(WORKER), "fail-after", "2", "--", *argv, ok=False, extra=("--tee", "3"))
    assert FAILURE in result.stderr
    assert not (tmp_path / "run" / "model.pt").exists()
    assert_rank_0_ended_quietly(result, "train")


def assert_rank_0_ended_quietly(result: subprocess.CompletedProcess, command: str) -> None:
    """Rank 0 (of a torchrun run with --tee 3) said at most one line of its own, without a
    traceback, and ended on torchrun's SIGTERM or by itself, not by its SIGKILL after a timeout."""
    rank_0 = [line.split("]:", 1)[1] for line in result.stderr.splitlines() if line.startswith("[default0]:")]
    assert not any("Traceback" in line for line in rank_0), rank_0
    assert len([line for line in rank_0 if line.startswith(f"adt-fast {command}: ")]) <= 1, rank_0
    assert "Unable to shutdown process" not in result.stderr, result.stderr[-3000:]


def test_two_process_eval_report_equals_one_process(tmp_path):
    from adt_fast.cli import main

    run = fit(small_config("standard", tmp_path / "run", epochs=1))
    args = ["--checkpoint", str(run), "--dataset", "synthetic", "--n-examples", "40", "--batch-size", "8",
            "--attacks", "fgsm,pgd:3,cw,feature,dist", "--dist-steps", "2", "--feature-targets", "1",
            "--epsilon-curve", "0,2", "--device", "cpu"]
    assert main(["eval", *args, "--out", str(tmp_path / "one" / "r.json")]) == 0
    result = torchrun("-m", "adt_fast", "eval", *args, "--out", str(tmp_path / "two" / "r.json"))
    assert "on 2 processes" in result.stdout
    assert_same_report(tmp_path / "two", tmp_path / "one")


def assert_same_report(parallel: Path, single: Path) -> None:
    """The r.json reports in two folders agree field by field, and their CSVs byte for byte."""
    one = json.loads((single / "r.json").read_text())
    two = json.loads((parallel / "r.json").read_text())
    assert one.keys() == two.keys()
    for key in one:
        assert two[key] == one[key], key
    assert (parallel / "r.csv").read_text() == (single / "r.csv").read_text()


def test_two_nodes_train_and_evaluate_as_one_process(tmp_path):
    """Two torchrun agents of one process each, which rendezvous by --rdzv-id as on two machines:
    both ranks have LOCAL_RANK 0, so a rank 0 taken from LOCAL_RANK would make two writers (and
    two measurers of the speed settings, which the worker refuses). Training and the sharded
    evaluation of its model are one process's."""
    from adt_fast.cli import main

    torchrun(str(WORKER), "methods", str(tmp_path / "parallel"), "adt-exp", nproc=1, nodes=2)
    parallel = tmp_path / "parallel" / "adt-exp"
    single = fit(small_config("adt-exp", tmp_path / "single"))
    assert_same_run(parallel, single)
    assert_same_weights(load(parallel / "model.pt")["model"], load(single / "model.pt")["model"])
    args = ["--checkpoint", str(parallel), "--dataset", "synthetic", "--n-examples", "24", "--batch-size", "8",
            "--attacks", "fgsm,pgd:3,dist", "--dist-steps", "2", "--epsilon-curve", "0,2", "--device", "cpu"]
    assert main(["eval", *args, "--out", str(tmp_path / "one" / "r.json")]) == 0
    result = torchrun("-m", "adt_fast", "eval", *args, "--out", str(tmp_path / "two" / "r.json"), nproc=1, nodes=2)
    assert "on 2 processes" in result.stdout
    assert_same_report(tmp_path / "two", tmp_path / "one")


def test_in_eval_a_rank_that_sees_another_fail_does_not_blame_the_model(tmp_path):
    """Rank 1's model raises in the middle of the attacks: rank 1 names --model, while rank 0,
    whose next collective then fails (gloo: 'Connection reset by peer', a plain RuntimeError),
    once reported that as its own model's failure (an in-process test below pins the line it says
    then). --tee labels each rank's lines."""
    result = torchrun("-m", "adt_fast", "eval", "--model", "tests.distributed_worker:failing_on_rank_1",
                      "--dataset", "synthetic", "--n-examples", "32", "--batch-size", "8", "--attacks", "fgsm,pgd:3",
                      "--epsilon-curve", "", "--device", "cpu", "--out", str(tmp_path / "r.json"),
                      extra=("--tee", "3"), ok=False)
    lines = (result.stdout + result.stderr).splitlines()
    errors = dict(line.split("]:", 1) for line in lines if line.startswith("[default") and ": error:" in line)
    assert errors["[default1"] == f"adt-fast eval: error: --model: the model failed during the attacks: " \
                                  f"RuntimeError: {FAILURE}"
    assert "--model" not in errors.get("[default0", "")
    assert_rank_0_ended_quietly(result, "eval")
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------------------------
# in-process: shares, random numbers, bad setups
# ------------------------------------------------------------------------------------------------
# What gloo raises on a rank whose peer exited, wherever the collective was called (DDP's own code, say).
GLOO_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
               "[127.0.0.1]:7601. This is typically caused by a remote worker crashing.")


def test_a_collective_failure_is_told_from_your_own_error():
    """gloo's transport errors count wherever they surface: DDP's own code calls it (its buffer
    broadcast), so the innermost frame is DDP's, not torch.distributed's."""
    assert distributed.collective_failed(RuntimeError(GLOO_CLOSED))
    with pytest.raises((RuntimeError, ValueError)) as inside:
        torch.distributed.get_rank()  # raised inside torch.distributed: no process group
    assert distributed.collective_failed(inside.value)
    try:
        raise RuntimeError("a corrupt batch")
    except RuntimeError as err:
        assert not distributed.collective_failed(err)


def test_nodes_with_builds_of_one_torch_release_for_other_cuda_versions_run_together(monkeypatch):
    """torch 2.7.1+cu126 on one node and 2.7.1+cu128 on another interoperate, and check_same
    refused them; another release is still refused. Each rank's part of the gather is what
    check_same sends under that rank's torch.__version__."""
    def sent(version: str) -> dict:
        monkeypatch.setattr(torch, "__version__", version)
        box = []
        monkeypatch.setattr(distributed.dist, "all_gather_object",
                            lambda ranks, ours: (box.append(ours), ranks.__setitem__(slice(None), [ours, ours])))
        World(1, 2).check_same({"seed": 0}, "settings")
        return box[0]

    def meet(*versions: str) -> None:
        parts = [sent(version) for version in versions]
        monkeypatch.setattr(distributed.dist, "all_gather_object",
                            lambda ranks, ours: ranks.__setitem__(slice(None), parts))
        World(0, 2).check_same({"seed": 0}, "settings")

    meet("2.7.1+cu126", "2.7.1+cu128")
    meet("2.7.1+cu126", "2.7.1")
    with pytest.raises(distributed.DistributedError,
                       match=r"^rank 1's settings differ from rank 0's: torch '2\.8\.0' \(rank 0: '2\.7\.1'\);"):
        meet("2.7.1+cu126", "2.8.0+cu126")


def test_batch_shares_cover_the_batch_and_weight_the_mean():
    for total, size in ((16, 2), (15, 4), (5, 5)):
        shards = [BatchShard.of(total, World(rank, size)) for rank in range(size)]
        assert [s.start for s in shards] == [0] + [s.stop for s in shards[:-1]]
        assert shards[-1].stop == total
        assert sum(s.weight for s in shards) == pytest.approx(size)
    with pytest.raises(distributed.DistributedError, match="cannot feed 4 processes"):
        BatchShard.of(3, World(0, 4))


def test_gathered_shares_come_back_in_global_order():
    parts = [{"a": [0, 2, 4], "d": {"k": ["x0", "x2", "x4"]}}, {"a": [1, 3], "d": {"k": ["x1", "x3"]}}]
    assert distributed._interleave(parts) == {"a": [0, 1, 2, 3, 4], "d": {"k": ["x0", "x1", "x2", "x3", "x4"]}}
    # a rank without items (more ranks than batches) has lazily filled dicts empty
    parts = [{"a": [0], "d": {"k": ["x0"]}}, {"a": [1], "d": {"k": ["x1"]}}, {"a": [], "d": {}}]
    assert distributed._interleave(parts) == {"a": [0, 1], "d": {"k": ["x0", "x1"]}}
    assert World(1, 3).share(list(range(7))) == [1, 4]


def test_a_shard_draws_its_rows_of_the_global_random_numbers():
    like = torch.zeros(6, 3, 4, 4)
    shard = BatchShard.of(10, World(1, 2))
    torch.manual_seed(3)
    full = torch.rand(10, 3, 4, 4)
    torch.manual_seed(3)
    torch.testing.assert_close(shard.draw(torch.rand_like, like[:5]), full[5:], rtol=0, atol=0)
    # the op's own normals, materialised, for rows of the batch
    mean, rho = torch.randn(10, 3, 4, 4), torch.randn(10, 3, 4, 4)
    torch.manual_seed(4)
    x_adv, nlp = sample_and_entropy(mean, rho, 3, 0.1)
    after = torch.rand(1)
    torch.manual_seed(4)
    noise = draw_normals(mean.shape, 3, rows=(5, 10), device=mean.device)
    assert torch.equal(torch.rand(1), after)  # the generator advanced as the op's call does
    mine, my_nlp = sample_and_entropy(mean[5:], rho[5:], 3, 0.1, noise=noise)
    torch.testing.assert_close(mine, x_adv[:, 5:], rtol=0, atol=1e-6)
    torch.testing.assert_close(my_nlp, nlp[:, 5:], rtol=1e-5, atol=1e-4)


def test_global_batch_must_split_over_the_processes(tmp_path):
    cfg = small_config("standard", tmp_path / "run", batch_size=15).resolve()
    with pytest.raises(ConfigError, match="--batch-size 15 is the global batch and must be divisible by"):
        loop._check_world_batches(cfg, 500, World(0, 2))
    cfg = small_config("standard", tmp_path / "run", batch_size=33, max_batches=None).resolve()
    with pytest.raises(ConfigError, match="the last batch of each epoch holds 5 of the 500"):
        loop._check_world_batches(cfg, 500, World(0, 11))
    loop._check_world_batches(dataclasses.replace(cfg, max_batches=3), 500, World(0, 11))  # never reached


def test_sync_bn_on_networks_without_batchnorm_is_an_error(tmp_path):
    without_batchnorm = "external_models:mlp"
    with pytest.raises(ConfigError, match="--sync-bn: neither the classifier .* have BatchNorm"):
        fit(small_config("standard", tmp_path / "run", arch=without_batchnorm))
    assert not any(tmp_path.iterdir())
    cfg = small_config("standard", tmp_path / "run", sync_bn=None, arch=without_batchnorm).resolve()
    trainer = loop.build_trainer(cfg, datasets.open_dataset("synthetic"))
    assert trainer.config.sync_bn is False  # unset: off without BatchNorm


def test_resume_with_another_sync_bn_is_refused(tmp_path):
    run = fit(small_config("standard", tmp_path / "run", epochs=1))
    with pytest.raises(ConfigError, match=r"--sync-bn false \(the run has true\)"):
        fit(dataclasses.replace(TrainConfig.load(run), resume=True, sync_bn=False))
    fit(dataclasses.replace(TrainConfig.load(run), resume=True, sync_bn=None, epochs=2))  # unset: the run's


def test_torchrun_device_is_the_local_rank(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device("cpu") == "cpu"
    with pytest.raises(distributed.DistributedError, match=r"LOCAL_RANK names \(cuda:1 here\)"):
        distributed.local_device("cuda:0")


@pytest.mark.parametrize("run_id,recorded", [("this-job", None), ("this-job", "another-job"),
                                             ("this-job", "this-job"), ("none", "this node's agent")])
def test_a_restarted_job_resumes_only_a_run_that_it_started(tmp_path, monkeypatch, run_id, recorded):
    """A restart after a first attempt that refused a non-empty --out must refuse it again, not
    train the run that was there before the job (torchrun restarts on any failure). A job with
    rendezvous id "none" (an explicit endpoint without --rdzv-id) is known by its agent."""
    run = fit(small_config("standard", tmp_path / "run", epochs=1))
    monkeypatch.setattr(distributed, "restarted", lambda: True)  # what the attempt's ranks agreed
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
    ours = distributed.job_id()
    assert ours == run_id or (run_id == "none" and ours.startswith("agent "))
    if recorded is not None:
        (run / loop.JOB_FILE).write_text(json.dumps({"job": ours if recorded == "this node's agent" else recorded}))
    again = dataclasses.replace(TrainConfig.load(run), epochs=2)
    if recorded not in ("this-job", "this node's agent"):
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        with pytest.raises(ConfigError, match=r"is not empty; .*\(torchrun restarted this job, which resumes only"):
            fit(again)
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    else:
        fit(again)
        assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
        assert json.loads((run / loop.JOB_FILE).read_text()) == {"job": ours}


@pytest.mark.parametrize("recorded", ["this-job", "another-job"])
def test_a_restart_after_a_kill_before_config_json_starts_the_run_afresh(tmp_path, monkeypatch, recorded):
    """The job file is the run's first write: a first attempt killed before config.json leaves it
    (and perhaps a temporary file of the cut write), and the restart must start the run, not
    refuse a directory that its own job made. Another job's such directory stays refused."""
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(distributed, "restarted", lambda: True)  # what the attempt's ranks agreed
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "this-job")
    (run / loop.JOB_FILE).write_text(json.dumps({"job": recorded}))
    leftover = run / ".config.json.abcd1234.tmp"
    leftover.write_text("{")
    assert files.ATOMIC_LEFTOVER.fullmatch(leftover.name)
    if recorded == "another-job":
        with pytest.raises(ConfigError, match="is not empty"):
            fit(small_config("standard", run, epochs=1))
        return
    fit(small_config("standard", run, epochs=1))
    assert [r["epoch"] for r in read_metrics(run)] == [1] and not leftover.exists()
    assert json.loads((run / loop.JOB_FILE).read_text()) == {"job": "this-job"}


def _launcher_env(monkeypatch, **values) -> None:
    """A launcher's environment for one process; a value of None unsets the variable."""
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), **values}
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def _train_and_eval_errors(tmp_path, capsys) -> list:
    """stderr of `train` and `eval`, each of which must fail (exit 2) before any work: train's
    dataset is a file that does not exist, so its error would come first if the data were read
    (it was, before train checked the launch environment at the start of fit)."""
    from adt_fast.cli import main

    absent = str(tmp_path / "absent" / "data.npz")
    assert main(["train", "--method", "standard", "--dataset", absent, "--out", str(tmp_path / "run")]) == 2
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--dataset", "synthetic",
                 "--out", str(tmp_path / "report.json")]) == 2
    assert not any(tmp_path.iterdir())
    return capsys.readouterr().err.splitlines()


BAD_TIMEOUTS = {"abc": "must be a number of seconds", "0": "must be a number of seconds in",
                "inf": "must be a number of seconds in", "nan": "must be a number of seconds in",
                "1e20": "must be a number of seconds in", str(distributed.MAX_TIMEOUT_S + 1): "at most a year"}


@pytest.mark.parametrize("value", list(BAD_TIMEOUTS))
def test_a_bad_dist_timeout_is_a_one_line_error_before_any_work(tmp_path, monkeypatch, capsys, value):
    """It once surfaced as a traceback from the group's setup in train, and as a --checkpoint
    error in eval; inf, nan and 1e20 as OverflowError or ValueError tracebacks on every rank."""
    _launcher_env(monkeypatch)
    monkeypatch.setenv(distributed.TIMEOUT_ENV, value)
    err = _train_and_eval_errors(tmp_path, capsys)
    assert [line.split(": error: ")[0] for line in err] == ["adt-fast train", "adt-fast eval"]
    for line in err:
        assert line.endswith(f"got '{value}'") and BAD_TIMEOUTS[value] in line
        assert f"error: ${distributed.TIMEOUT_ENV} must be" in line
    with pytest.raises(distributed.DistributedError, match=distributed.TIMEOUT_ENV):
        distributed.setup("cpu")


def test_a_year_of_dist_timeout_is_accepted(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, str(distributed.MAX_TIMEOUT_S))
    assert distributed.timeout().days == 365


@pytest.mark.parametrize("unset,problem", [
    (("MASTER_ADDR", "MASTER_PORT"), "but MASTER_ADDR and MASTER_PORT are not"),
    (("MASTER_PORT",), "but MASTER_PORT is not"),
    ((), None),
])
def test_ranks_without_a_rendezvous_address_are_a_one_line_error(tmp_path, monkeypatch, capsys, unset, problem):
    """RANK, WORLD_SIZE and LOCAL_RANK left in the shell or set by a SLURM or MPI wrapper, without
    torchrun's MASTER_ADDR and MASTER_PORT: torch's env:// rendezvous raised a bare ValueError, a
    traceback in train and a --checkpoint error in eval. Bad ranks likewise."""
    _launcher_env(monkeypatch, **dict.fromkeys(unset))
    if problem is None:  # the ranks themselves
        monkeypatch.setenv("RANK", "1")
        problem = "$RANK 1 is not below $WORLD_SIZE 1"
    err = _train_and_eval_errors(tmp_path, capsys)
    remedy = "start the command with torchrun (which sets them all), or unset RANK WORLD_SIZE LOCAL_RANK"
    assert [line.split(": error: ")[0] for line in err] == ["adt-fast train", "adt-fast eval"]
    for line in err:
        assert problem in line and remedy in line and "--checkpoint" not in line
    with pytest.raises(distributed.DistributedError, match=re.escape(problem)):
        distributed.setup("cpu")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(distributed.DistributedError, match=r"\$LOCAL_RANK must be a non-negative integer, got 'x'"):
        distributed.local_device("cuda")


@pytest.mark.parametrize("unset,problem", [
    (("LOCAL_RANK",), "$WORLD_SIZE is 2, as a launcher sets it for a group of processes, but LOCAL_RANK is not set"),
    (("RANK", "LOCAL_RANK"), "but RANK and LOCAL_RANK are not set"),
])
def test_a_world_size_above_1_without_the_ranks_is_a_one_line_error(tmp_path, monkeypatch, capsys, unset, problem):
    """Two processes started by hand for one job as torch's env:// documentation starts them
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, no LOCAL_RANK) each ran the whole job as a
    single process: train's rank 0 trained the run alone and rank 1 failed on its lock, eval's
    ranks each attacked every example and wrote the report."""
    _launcher_env(monkeypatch, WORLD_SIZE="2", **dict.fromkeys(unset))
    err = _train_and_eval_errors(tmp_path, capsys)
    assert [line.split(": error: ")[0] for line in err] == ["adt-fast train", "adt-fast eval"]
    for line in err:
        assert problem in line and "start the command with torchrun" in line
    with pytest.raises(distributed.DistributedError, match=re.escape(problem)):
        distributed.check_timeout()
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process whatever the others say
    distributed.check_timeout()
    assert distributed.setup("cpu") == World()


def test_a_master_port_in_use_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """Processes started by hand whose MASTER_PORT another program holds: train once said another
    process had failed (eval likewise), after torch's traceback of the store."""
    from adt_fast.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        _launcher_env(monkeypatch, MASTER_PORT=str(port))
        assert main(["train", "--method", "standard", "--dataset", "synthetic", "--out", str(tmp_path / "run")]) == 2
        assert main(["eval", "--model", "tests.external_models:build", "--dataset", "synthetic", "--attacks", "fgsm",
                     "--n-examples", "4", "--device", "cpu", "--out", str(tmp_path / "report.json")]) == 2
        with pytest.raises(distributed.DistributedError, match="address already in use"):
            distributed.setup("cpu")
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": error: ")[0] for line in err if ": error: " in line] == ["adt-fast train", "adt-fast eval"]
    for line in (line for line in err if ": error: " in line):
        assert f"the processes could not meet at $MASTER_ADDR:$MASTER_PORT (127.0.0.1:{port}): " in line
        assert "address already in use" in line and "another process failed" not in line
    assert not any(tmp_path.iterdir())


def test_a_rank_whose_collective_fails_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Rank 0, whose next collective fails when rank 1 raises, says so and what the run kept; it
    once printed gloo's error as a traceback of its own, which read as a second failure. Here the
    second step of a one-process group under a launcher's environment raises it."""
    from adt_fast.cli import main
    from adt_fast.train.methods import Method

    original, taken = Method.train_step, []

    def train_step(self, *args, **kwargs):
        taken.append(1)
        if len(taken) > 1:
            raise RuntimeError(GLOO_CLOSED)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Method, "train_step", train_step)
    _launcher_env(monkeypatch)
    try:
        code = main(["train", "--method", "standard", "--dataset", "synthetic", "--out", str(tmp_path / "run"),
                     "--epochs", "2", "--batch-size", "16", "--no-tensorboard", "--device", "cpu"])
    finally:
        distributed._joined.cache_clear()  # its store's port is this test's
    err = capsys.readouterr().err.splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("adt-fast train: error: another process failed (")
    assert f"or the processes could not communicate (RuntimeError: {GLOO_CLOSED})" in err[0]
    assert err[0].endswith(f"adt-fast train --resume --out {tmp_path / 'run'} starts it again from epoch 1"), err[0]


def test_in_eval_a_rank_whose_collective_fails_does_not_blame_the_model(tmp_path, monkeypatch, capsys):
    """gloo's error on rank 0 of an eval of --model is another process's failure, not the model's."""
    from adt_fast.attacks import evaluation
    from adt_fast.cli import main

    def evaluate(*args, **kwargs):
        raise RuntimeError(GLOO_CLOSED)

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    _launcher_env(monkeypatch)
    try:
        code = main(["eval", "--model", "tests.external_models:build", "--dataset", "synthetic", "--n-examples", "8",
                     "--attacks", "fgsm", "--epsilon-curve", "", "--device", "cpu", "--out", str(tmp_path / "r.json")])
    finally:
        distributed._joined.cache_clear()
    assert code == 2
    assert capsys.readouterr().err == (f"adt-fast eval: error: another process failed (see its error, or torchrun's "
                                       f"summary for a process that was killed), or the processes could not "
                                       f"communicate (RuntimeError: {GLOO_CLOSED})\n")
    assert not (tmp_path / "r.json").exists()


def test_a_torchrun_run_records_cuda_not_rank_0s_gpu(tmp_path, monkeypatch):
    """Rank 0 trains on cuda:0; config.json must say `cuda`, or a later --resume under torchrun
    would hand cuda:0 to every rank and rank 1 would refuse it."""
    cfg = small_config("standard", tmp_path / "run")
    monkeypatch.setattr(distributed, "launched", lambda: False)
    assert distributed.run_device("cuda:1") == "cuda:1" and distributed.run_device("cpu") == "cpu"
    monkeypatch.setattr(distributed, "launched", lambda: True)
    assert distributed.run_device("cuda:0") == "cuda" and distributed.run_device("cpu") == "cpu"
    loop.start_run(dataclasses.replace(cfg, device="cuda:0"), [], {"kind": "named", "name": "synthetic"})
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device"] == "cuda"


def test_speed_settings_are_measured_on_one_ranks_share_of_a_batch(tmp_path, monkeypatch):
    """Each rank steps on batch_size / world size examples; rank 0 must time that, not the
    global batch (k times which, at a data-parallel batch size, need not fit on one GPU)."""
    measured = []
    monkeypatch.setattr(loop.tuning, "load_or_measure", lambda run_dir, method, model, x, y, **kw: measured.append(len(x)) or {})
    monkeypatch.setattr(loop, "DataParallel", lambda *args, **kwargs: None)
    cfg = small_config("standard", tmp_path / "run", batch_size=16).resolve()
    dataset = datasets.open_dataset("synthetic")
    loop.build_trainer(cfg, dataset, World(rank=0, size=2)).tune()
    loop.build_trainer(cfg, dataset, World()).tune()
    assert measured == [8, 16]
    # A batch larger than the data holds all of it, and rank 0 steps on its share of that (the
    # extra example of an odd count, as BatchShard deals them). The mode line prints the same
    # count; it once printed --batch-size.
    whole = small_config("standard", tmp_path / "run", batch_size=10**6).resolve()
    measured.clear()
    trainers = [loop.build_trainer(whole, dataset, World(rank=0, size=2)), loop.build_trainer(whole, dataset, World())]
    for trainer in trainers:
        trainer.tune()
    n = len(dataset.train[1])
    assert measured == [(n + 1) // 2, n] == [trainer.step_inputs for trainer in trainers]


# restarted(), the agent's job id across attempts, and a shard's mid-quad rows (mutation review 2026-12-05).
STALE_TOKEN = "0" * 32


def stale_store(size: int) -> torch.distributed.TCPStore:
    """A TCP store server, as torchrun's agent keeps it across attempts, with the handshake keys of
    an earlier attempt on which every rank restarted: hellos and replies of other nonces, acks
    and an answer under another token."""
    store = torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False,
                                       timeout=datetime.timedelta(seconds=10))
    for rank in range(1, size):
        store.set(f"adt_fast/hello/{rank}", f"old{rank}")
        store.set(f"adt_fast/reply/{rank}", f"old{rank}|{STALE_TOKEN}")
        store.set(f"adt_fast/{STALE_TOKEN}/ack/{rank}", "1")
    store.set(f"adt_fast/{STALE_TOKEN}/restarted", "1")
    return store


def handshake_in_threads(server, counts: dict, size: int, limit_s: float = 20.0, late_s: float = 0.0) -> dict:
    """_handshake on each rank of `counts` (rank: its TORCHELASTIC_RESTART_COUNT), a thread and a
    store client each, the ranks but 0 `late_s` after rank 0; rank: Attempt or the exception."""
    results = {}

    def rank_thread(rank):
        time.sleep(late_s if rank else 0.0)
        client = torch.distributed.TCPStore("127.0.0.1", server.port, is_master=False,
                                            timeout=datetime.timedelta(seconds=limit_s + 2))
        try:
            results[rank] = distributed._handshake(client, rank, size, counts[rank],
                                                   datetime.timedelta(seconds=limit_s))
        except Exception as err:  # noqa: BLE001 - the test looks at it
            results[rank] = err

    threads = [threading.Thread(target=rank_thread, args=(rank,)) for rank in counts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=limit_s + 10)
    assert not any(thread.is_alive() for thread in threads)
    return results


@pytest.mark.parametrize("late_s", [0.0, 0.3])
@pytest.mark.parametrize("counts,restarted", [([0, 1, 0], True), ([1, 0, 0], True), ([0, 0, 0], False)])
def test_the_ranks_of_an_attempt_agree_on_fresh_keys_and_on_any_nodes_restart(counts, restarted, late_s):
    """Across nodes each torchrun agent keeps its own restart count: a node whose workers still ran
    is restarted with its count unchanged, so the ranks' counts differ (once they keyed the group
    by them: gloo could not connect, and a rank 0 whose count was 0 refused to resume). The
    handshake gives every rank one token, not the stale one the store still holds, and one answer:
    restarted if any count is above 0, whatever the earlier attempt's keys say (late_s: the other
    ranks' hellos come after rank 0 has read and answered the stale ones)."""
    server = stale_store(len(counts))
    results = handshake_in_threads(server, dict(enumerate(counts)), len(counts), late_s=late_s)
    assert all(isinstance(result, distributed.Attempt) for result in results.values()), results
    assert len({result.token for result in results.values()}) == 1
    assert results[0].token != STALE_TOKEN
    assert all(result.restarted is restarted for result in results.values())


def test_a_rank_that_never_joins_the_handshake_is_named(monkeypatch):
    """Rank 2 of 3 never comes (its stale hello is answered, in vain): rank 0 names it after the
    limit. A rank whose rank 0 never comes says so. Outside torchrun there is no handshake."""
    server = stale_store(3)
    results = handshake_in_threads(server, {0: 0, 1: 0}, 3, limit_s=1.0)
    assert isinstance(results[0], distributed.DistributedError)
    assert str(results[0]).startswith(f"rank 2 of 3 did not join within 1 s (${distributed.TIMEOUT_ENV})")
    results = handshake_in_threads(stale_store(2), {1: 0}, 2, limit_s=0.5)
    assert isinstance(results[1], distributed.DistributedError)
    assert str(results[1]).startswith("rank 0 did not answer rank 1 within 0.5 s")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    monkeypatch.setattr(distributed, "_joined", lambda: pytest.fail("a handshake outside torchrun"))
    assert not distributed.restarted()


def test_restarted_is_the_handshakes_answer_under_a_launcher(monkeypatch):
    """One rank under a launcher's environment (env:// then hosts the store in this process): the
    attempt's answer is its count's, taken once; setup joins the group under the attempt's keys."""
    _launcher_env(monkeypatch, TORCHELASTIC_RESTART_COUNT="1")
    distributed._joined.cache_clear()
    try:
        assert distributed.restarted() and distributed.restarted()
        assert distributed._joined.cache_info().misses == 1
        with distributed.session("cpu") as world:
            assert world.size == 1 and world.sum([2.0], torch.device("cpu")) == [2.0]
    finally:
        distributed._joined.cache_clear()


def test_a_session_meets_the_other_ranks_before_teardown_unless_it_failed(monkeypatch):
    """A session that ends normally waits at a barrier before destroying the group (torch 2.6 and
    2.7's gloo teardown hung when a peer had already gone); one that raised must not wait for
    ranks that may be dead."""
    _launcher_env(monkeypatch)
    distributed._joined.cache_clear()
    calls = []
    monkeypatch.setattr(distributed.World, "barrier", lambda self: calls.append("barrier"))
    real_destroy = distributed.dist.destroy_process_group
    monkeypatch.setattr(distributed.dist, "destroy_process_group",
                        lambda: (calls.append("destroy"), real_destroy()))
    try:
        with distributed.session("cpu"):
            pass
        assert calls == ["barrier", "destroy"]
        calls.clear()
        with pytest.raises(RuntimeError, match="a failed command"), distributed.session("cpu"):
            raise RuntimeError("a failed command")
        assert calls == ["destroy"]
    finally:
        distributed._joined.cache_clear()


@pytest.mark.parametrize("run_id", ["none", ""])
def test_a_job_without_a_rendezvous_id_is_known_by_its_agent_in_every_attempt(monkeypatch, run_id):
    """Without a rendezvous id the job is this node's torchrun agent, the workers' parent: two
    attempts (two worker processes of one agent, played here by this test's process) give the same
    id (mutants: the worker's own pid, different in every attempt; an empty id taken as the job's)."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
    attempt = [sys.executable, "-c", "from adt_fast.distributed import job_id; print(job_id())"]
    ids = {subprocess.run(attempt, capture_output=True, text=True, check=True, env=os.environ).stdout.strip()
           for _ in range(2)}
    assert len(ids) == 1 and ids.pop().endswith(f":{os.getpid()}")
    assert distributed.job_id().startswith("agent ")


@pytest.mark.parametrize("rows", [(0, 3), (3, 7), (7, 10), (9, 10)])
def test_a_shard_draws_its_rows_of_the_op_normals_mid_quad(rows):
    """As test_a_shard_draws_its_rows_of_the_global_random_numbers, with rows of 3 values, so a
    rank's first value falls inside one of Philox's quads of 4 (mutants: quad offset ignored;
    normals counted wrongly). The shard's op_normals are those rows of the single-process call."""
    start, stop = rows
    mean, rho = torch.randn(10, 3), torch.randn(10, 3)
    torch.manual_seed(4)
    x_adv, nlp = sample_and_entropy(mean, rho, 3, 0.1, clamp=None)
    torch.manual_seed(4)
    noise = draw_normals(mean.shape, 3, rows=rows, device=mean.device)
    mine, my_nlp = sample_and_entropy(mean[start:stop], rho[start:stop], 3, 0.1, clamp=None, noise=noise)
    torch.testing.assert_close(mine, x_adv[:, start:stop], rtol=0, atol=1e-6)
    torch.testing.assert_close(my_nlp, nlp[:, start:stop], rtol=1e-5, atol=1e-4)
    shard = distributed.BatchShard(start, stop, 10, 2)
    torch.manual_seed(4)
    assert torch.equal(shard.op_normals(mean[start:stop], 3, "auto"), noise)
