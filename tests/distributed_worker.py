"""What tests/test_distributed.py runs under torchrun (not a test module itself).

    python -m torch.distributed.run ... tests/distributed_worker.py methods OUT [METHOD ...]
        trains each method (default METHODS; small settings, --sync-bn) into OUT/<method>, in one
        process group, in the contiguous format that rank 0 measures as the faster; a METHOD may
        also be one of VARIANTS, a method with other settings;
    python -m torch.distributed.run ... tests/distributed_worker.py methods-channels-last OUT [METHOD ...]
        the same in channels_last;
    python -m torch.distributed.run ... tests/distributed_worker.py kill-after STEPS -- TRAIN ARGS
        `adt-fast train TRAIN ARGS`, except that on the group's first attempt rank 1 SIGKILLs
        itself after STEPS training steps (torchrun --max-restarts then restarts the group);
    python -m torch.distributed.run ... tests/distributed_worker.py kill-alone-after STEPS -- TRAIN ARGS
        kill-after, except that rank 0 waits at its next step until torchrun stops it: only rank
        1's worker fails (on two nodes, torchrun restarts the other node as a membership change,
        with its TORCHELASTIC_RESTART_COUNT unchanged); each rank says its count on stderr;
    python -m torch.distributed.run ... tests/distributed_worker.py wait-for-a-node-after STEPS -- TRAIN ARGS
        `adt-fast train TRAIN ARGS`, except that in a group of one process, rank 0 says "waiting for a
        node" on stderr after STEPS steps and waits at its next step until torchrun stops it (on a
        node joining the elastic job, a change of membership); each rank says its count on stderr;
    python -m torch.distributed.run ... tests/distributed_worker.py fail-after STEPS -- TRAIN ARGS
        the same, but rank 1 raises FAILURE instead (a real error, which must end the run);
    python -m torch.distributed.run ... tests/distributed_worker.py rank-1-adds ARGS -- COMMAND ARGS
        `adt-fast COMMAND ARGS`, with ARGS added on rank 1 (as if its node had been given another line);
    python -m torch.distributed.run ... tests/distributed_worker.py sync-bn OUT
        each rank runs its share of sync_bn_batch() through a synchronised BatchNorm, in float32
        and in bfloat16 under autocast, and saves what came out to OUT/rank<R>.pt.

and `adt-fast eval --model tests.distributed_worker:failing_on_rank_1` builds a model that fails on
rank 1 in the middle of the attacks.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

METHODS = ("standard", "at-pgd", "adt-exp", "adt-exp-am")
FAILURE = "a corrupt batch on rank 1"
WAIT_TO_BE_STOPPED_S = 60  # torchrun stops it within seconds; failing after this, rank 0 would count a restart
OTHER_METHODS = ("trades", "adt-imp-am", "at-fgsm", "alp", "l2l")
# name: (method, settings). ADT_IMP-AM with no entropy term (q must stay in DDP's graph), and with
# a hinge of 1.2, within the spread of the tiny runs' batch-mean bounds (about -1.13 to -1.26):
# active on some global batches but not on some ranks' shares, or the other way round.
VARIANTS = {
    "adt-imp-am-lbd0": ("adt-imp-am", {"lbd": 0.0}),
    "adt-imp-am-trades-beta0": ("adt-imp-am", {"loss": "trades", "beta": 0.0, "beta_scales_entropy": True}),
    "adt-imp-am-hinge1.2": ("adt-imp-am", {"hinge": 1.2}),
}


def small_config(method: str, out: Path, **overrides):
    from adt_fast.train import TrainConfig

    if method in VARIANTS:
        method, settings = VARIANTS[method]
        overrides = {**settings, **overrides}

    extra = {"generator_width": 8} if method in ("adt-exp-am", "adt-imp-am", "l2l") else {}
    if method in ("at-pgd", "adt-exp", "trades", "alp"):
        extra["steps"] = 2
    if method == "adt-exp":
        extra["samples"] = 2
    # CPU and gloo on any machine: a second rank would have no GPU of its own on a one-GPU machine
    settings = dict(method=method, dataset="synthetic", out=str(out), epochs=2, max_batches=2,
                    batch_size=16, lr_drop=[], tensorboard=False, sync_bn=True, device="cpu", **extra)
    settings.update(overrides)
    return TrainConfig(**settings)


def pin_memory_format(channels_last: bool) -> None:
    """Rank 0 measures `channels_last` (or contiguous) as the faster memory format: a real timing
    of the tiny test models is noise, and the single-process runs these are compared with pin
    theirs. Any other rank that measured fails the run: every rank takes rank 0's choice."""
    from adt_fast.train import tuning

    def measured(*args, **kwargs):
        if os.environ.get("RANK") != "0":
            raise RuntimeError(f"rank {os.environ.get('RANK')} measured the memory format itself")
        return {"contiguous": 2.0, "channels_last": 1.0} if channels_last else {"contiguous": 1.0, "channels_last": 2.0}
    tuning.time_memory_formats = measured


def train_methods(out: Path, methods) -> None:
    from adt_fast import distributed
    from adt_fast.train import fit

    with distributed.session("cpu"):
        for method in methods:
            fit(small_config(method, out / method))
    if live_gloo_threads():  # a group kept alive past its session may abort the rank at exit
        sys.exit(f"gloo threads still running after the session: {live_gloo_threads()}")


def live_gloo_threads() -> list:
    """Names of this process's gloo threads (Linux); none once the process group is freed."""
    names = []
    for comm in Path("/proc/self/task").glob("*/comm"):
        try:
            name = comm.read_text().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if "gloo" in name:
            names.append(name)
    return names


def sync_bn_batch():
    """A global batch, BatchNorm's affine parameters and the weights of the loss sum(w * out)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 4, 4, generator=generator) * 2 + 1
    affine = torch.randn(2, 3, generator=generator)
    return x, affine, torch.randn(8, 3, 4, 4, generator=generator)


def sync_bn_layer(out: Path) -> None:
    import torch
    from torch import distributed as dist
    from torch import nn

    from adt_fast import distributed

    x, affine, loss_weights = sync_bn_batch()
    with distributed.session("cpu"):
        rank, world = dist.get_rank(), dist.get_world_size()
        saved = {}
        for dtype in (torch.float32, torch.bfloat16):
            layer = distributed.convert_sync_batchnorm(nn.BatchNorm2d(3), torch.device("cpu"))
            with torch.no_grad():
                layer.weight.copy_(affine[0])
                layer.bias.copy_(affine[1])
            share = x.chunk(world)[rank].to(dtype).requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                y = layer(share)
            (y.float() * loss_weights.chunk(world)[rank]).sum().backward()
            saved[str(dtype)] = {"out": y.detach(), "grad": share.grad, "running_mean": layer.running_mean,
                                 "running_var": layer.running_var}
        out.mkdir(parents=True, exist_ok=True)
        torch.save(saved, out / f"rank{rank}.pt")


def failing_on_rank_1(calls: int = 3):
    """A linear classifier of synthetic's 3 x 8 x 8 images whose forward raises FAILURE on rank 1
    after `calls` calls (the probe's and the first attack steps')."""
    import torch
    from torch import nn

    class FailingOnRank1(nn.Linear):
        def forward(self, x):
            self.calls = getattr(self, "calls", 0) + 1
            if os.environ.get("RANK") == "1" and self.calls > calls:
                raise RuntimeError(FAILURE)
            return super().forward(x.flatten(1))

    torch.manual_seed(0)
    return FailingOnRank1(3 * 8 * 8, 10)


def say_restart_count() -> None:
    print(f"rank {os.environ.get('RANK')}, restart count {os.environ.get('TORCHELASTIC_RESTART_COUNT')}",
          file=sys.stderr, flush=True)


def wait_to_be_stopped_after(steps: int, waiting, note: str = "") -> None:
    """Training steps past `steps` wait for torchrun to stop this worker while waiting() holds
    (outside any collective, which a peer's death would fail), saying `note` on stderr first."""
    from adt_fast.train.methods import Method

    original, taken = Method.train_step, []

    def train_step(self, *args, **kwargs):
        taken.append(1)
        if len(taken) > steps and waiting():
            if note:
                print(note, file=sys.stderr, flush=True)
            time.sleep(WAIT_TO_BE_STOPPED_S)
        return original(self, *args, **kwargs)

    Method.train_step = train_step


def wait_for_a_node_after(steps: int, argv: list) -> int:
    from adt_fast.cli import main

    say_restart_count()
    if os.environ.get("WORLD_SIZE") == "1":
        wait_to_be_stopped_after(steps, lambda: True, note="waiting for a node")
    return main(["train", *argv])


def stop_after(steps: int, argv: list, kill: bool, alone: bool = False) -> int:
    from adt_fast import distributed
    from adt_fast.cli import main
    from adt_fast.train.methods import Method

    if alone:
        say_restart_count()
    if alone and os.environ.get("RANK") == "0":
        wait_to_be_stopped_after(steps, lambda: not distributed.restarted())
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0" and os.environ.get("RANK") == "1":
        original, taken = Method.train_step, []

        def train_step(self, *args, **kwargs):
            taken.append(1)
            if len(taken) > steps and kill:
                os.kill(os.getpid(), signal.SIGKILL)
            if len(taken) > steps:
                raise RuntimeError(FAILURE)
            return original(self, *args, **kwargs)

        Method.train_step = train_step
    return main(["train", *argv])


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode in ("methods", "methods-channels-last"):
        pin_memory_format(channels_last=mode == "methods-channels-last")
        train_methods(Path(sys.argv[2]), sys.argv[3:] or METHODS)
    elif mode == "rank-1-adds":
        from adt_fast.cli import main

        split = sys.argv.index("--")
        added = sys.argv[2:split] if os.environ.get("RANK") == "1" else []
        sys.exit(main([*sys.argv[split + 1:], *added]))
    elif mode == "sync-bn":
        sync_bn_layer(Path(sys.argv[2]))
    elif mode == "wait-for-a-node-after":
        pin_memory_format(channels_last=False)
        sys.exit(wait_for_a_node_after(int(sys.argv[2]), sys.argv[4:]))
    elif mode in ("kill-after", "kill-alone-after", "fail-after"):
        pin_memory_format(channels_last=False)
        sys.exit(stop_after(int(sys.argv[2]), sys.argv[4:], kill=mode != "fail-after",
                            alone=mode == "kill-alone-after"))
    else:
        sys.exit(f"unknown mode {mode!r}")
