"""torch.distributed plumbing shared by training and evaluation (torchrun, DDP, NCCL or gloo).

Nothing here launches processes or implements a collective: ``torchrun`` starts the workers and
sets RANK / WORLD_SIZE / LOCAL_RANK; this module joins its process group (NCCL for CUDA, gloo for
CPU, with a timeout so that a dead or failing worker ends the run instead of hanging it), picks
the device LOCAL_RANK names, and offers the few torch.distributed calls the trainer and the
evaluator need. Without torchrun's environment every function is a no-op for a world of one.

Semantics that do not depend on the number of processes (docs/distributed.md):
- a global batch is split into contiguous shares, one per rank (:class:`BatchShard`);
- random numbers that a single process would draw for the whole batch are drawn for the whole
  batch on every rank (all ranks hold the same generator states) and each rank keeps its rows;
- BatchNorm statistics come from the whole global batch when BatchNorm is synchronised
  (:func:`convert_sync_batchnorm`; torch's SyncBatchNorm on CUDA, an all-reduce version on CPU).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import torch
import torch.distributed as dist
from torch import nn

from .tracebacks import raised_in

if dist.is_available():
    # Before any process group exists: its functions take group=group.WORLD as a default, bound at
    # import. Imported later (DDP does, through torch._dynamo), that default keeps the world group
    # alive after destroy_process_group(), and gloo's threads torn down at interpreter exit can
    # abort a rank ("terminate called without an active exception").
    import torch.distributed.nn  # noqa: F401

TIMEOUT_ENV = "ADT_FAST_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600
# A year: far above any wait a run needs, and within what the store's sockets take (1e10 s made
# the TCP store's connection time out at once, and timedelta overflows near 1e14 s).
MAX_TIMEOUT_S = 365 * 24 * 3600
_LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_RENDEZVOUS_ENV = ("MASTER_ADDR", "MASTER_PORT")  # where init_method env:// finds rank 0's store
_REMEDY = (f"start the command with torchrun (which sets them all), or unset {' '.join(_LAUNCH_ENV)} to run "
           f"as a single process")


class DistributedError(ValueError):
    """A setup that cannot run data-parallel (device, batch size, ...); names the flag."""


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process as one of a group."""
    return all(name in os.environ for name in _LAUNCH_ENV)


def restarted() -> bool:
    """Whether torchrun restarted the worker group after a failure (--max-restarts), on any node:
    the same answer on every rank of the attempt (see _handshake). False outside torchrun."""
    return launched() and _joined().attempt.restarted


def job_id() -> Optional[str]:
    """An id of this torchrun job, the same in every attempt; None outside torchrun.

    torchrun's rendezvous id when it has one: --rdzv-id, or a fresh uuid for a plain one-node
    launch or --standalone. With --master-port or --rdzv-endpoint and no --rdzv-id it is "none";
    then the id is this node's torchrun process (its elastic agent, our parent, which restarts the
    workers itself): the same across the job's restarts on this node, different on other nodes,
    which is why several nodes should pass --rdzv-id."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    run_id = os.environ["TORCHELASTIC_RUN_ID"]
    return run_id if run_id not in ("", "none") else f"agent {socket.gethostname()}:{os.getppid()}"


def timeout() -> datetime.timedelta:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise DistributedError(f"${TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    if not 0 < seconds <= MAX_TIMEOUT_S:  # NaN fails too
        raise DistributedError(f"${TIMEOUT_ENV} must be a number of seconds in (0, {MAX_TIMEOUT_S}] (at most "
                               f"a year), got {text!r}")
    return datetime.timedelta(seconds=seconds)


def _check_launch_env() -> None:
    """A launched process's variables: the rendezvous's present, the ranks integers.

    RANK, WORLD_SIZE and LOCAL_RANK alone can be left over from a shell or set by a SLURM or MPI
    wrapper; torchrun sets all of them with MASTER_ADDR and MASTER_PORT, and without those two
    torch's env:// rendezvous fails with a bare ValueError.
    """
    missing = [name for name in _RENDEZVOUS_ENV if not os.environ.get(name)]
    if missing:
        raise DistributedError(f"{', '.join(_LAUNCH_ENV)} are set, as a launcher sets them, but "
                               f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: {_REMEDY}")
    _env_int("MASTER_PORT")
    _env_int("LOCAL_RANK")
    rank, size = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank >= size:
        raise DistributedError(f"$RANK {rank} is not below $WORLD_SIZE {size}: {_REMEDY}")


def _env_int(name: str) -> int:
    """A launcher's variable that must be a non-negative integer; DistributedError if not."""
    text = os.environ[name].strip()
    if not (text.isascii() and text.isdigit()):
        raise DistributedError(f"${name} must be a non-negative integer, got {os.environ[name]!r}: {_REMEDY}")
    return int(text)


def _check_not_half_launched() -> None:
    """Without all of RANK, WORLD_SIZE and LOCAL_RANK, a WORLD_SIZE above 1 still says that
    several processes were started for one job: each would run the whole job alone (a manual
    env:// launch, as torch's documentation sets it, has no LOCAL_RANK)."""
    text = os.environ.get("WORLD_SIZE", "").strip()
    if text.isascii() and text.isdigit() and int(text) > 1:
        missing = [name for name in _LAUNCH_ENV if name not in os.environ]
        raise DistributedError(f"$WORLD_SIZE is {text}, as a launcher sets it for a group of processes, but "
                               f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set, so every "
                               f"process would run the whole job alone: {_REMEDY}")


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 without one), known before the group is
    joined: notes and warnings printed while a command checks its settings or reads its data come
    from rank 0 alone. A $RANK that is no rank counts as 0: printing a note never fails, and each
    command refuses it, naming it (check_timeout)."""
    try:
        return _env_int("RANK") if launched() else 0
    except DistributedError:
        return 0


def check_timeout() -> None:
    """Under a launcher, its environment and $ADT_FAST_DIST_TIMEOUT read before any work: a bad
    value is a setup error (DistributedError), not a traceback from inside the process group's
    setup. Without one, a WORLD_SIZE that only a launcher would set is refused likewise. Each
    command (train's fit, eval's plan) calls it once, first; setup does not repeat it."""
    if launched():
        _check_launch_env()
        timeout()
    else:
        _check_not_half_launched()


@dataclass(frozen=True)
class World:
    """This process's place in the group: its rank and the group's size."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def check_same(self, values: dict, what: str) -> None:
        """Every rank's `values`, torch's release and adt_fast's version are rank 0's; else
        DistributedError on every rank, naming what differs. For what each rank takes from its own
        command line, environment and files (on several nodes, each node's own), which no collective
        compares: a rank that differs would compute something else, silently or until a collective
        times out. It meets the other ranks, as a barrier does.

        torch's version without its local part: 2.7.1+cu126 and 2.7.1+cu128 are builds of one
        release for other CUDA versions (or +cpu), which interoperate. adt_fast's is compared whole:
        a local part of its own would name other code."""
        if not self.parallel:
            return
        from . import __version__

        ranks = [None] * self.size
        dist.all_gather_object(ranks, {**values, "torch": torch.__version__.split("+")[0], "adt_fast": __version__})
        ours = ranks[0]
        for rank, theirs in enumerate(ranks[1:], start=1):
            differ = [f"{name} {theirs.get(name)!r} (rank 0: {ours.get(name)!r})"
                      for name in dict.fromkeys([*ours, *theirs]) if theirs.get(name) != ours.get(name)]
            if differ:
                raise DistributedError(f"rank {rank}'s {what} differ from rank 0's: {'; '.join(differ)}; start "
                                       f"every process with the same command, software and files")

    def sum(self, values: list, device: torch.device) -> list:
        """Element-wise sum over ranks of a list of numbers (float64 on the wire)."""
        if not dist.is_initialized():
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object) on every rank: a choice all ranks must share."""
        if not dist.is_initialized():
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank."""
        if dist.is_initialized():
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def share(self, items: list) -> list:
        """This rank's items of a list dealt round-robin (item i goes to rank i mod size)."""
        return items[self.rank::self.size]

    def gather_shares(self, local: dict) -> dict:
        """Undo :meth:`share`: `local` maps names to lists (one entry per local item, nested dicts
        allowed); returns the same structure with every list in the global item order."""
        if not self.parallel:
            return local
        parts = [None] * self.size
        dist.all_gather_object(parts, local)
        return _interleave(parts)


def _interleave(parts: list):
    if any(isinstance(part, dict) for part in parts):  # a rank without items may lack some keys
        keys = dict.fromkeys(key for part in parts for key in part)
        return {key: _interleave([part.get(key, []) for part in parts]) for key in keys}
    total = sum(len(part) for part in parts)
    return [parts[i % len(parts)][i // len(parts)] for i in range(total)]


def current() -> World:
    """The world this process belongs to (a world of one when no group is initialised)."""
    if not dist.is_initialized():
        return World()
    return World(dist.get_rank(), dist.get_world_size())


def local_device(requested: str) -> str:
    """The device of this process: under torchrun `cuda` means cuda:LOCAL_RANK; `cpu` stays."""
    device = torch.device(requested)
    if not launched() or device.type != "cuda":
        return str(device)
    local_rank = _env_int("LOCAL_RANK")
    if device.index is not None and device.index != local_rank:
        raise DistributedError(f"under torchrun each process uses the GPU its "
                               f"LOCAL_RANK names (cuda:{local_rank} here); pass --device cuda "
                               f"(or restrict GPUs with CUDA_VISIBLE_DEVICES)")
    if local_rank >= torch.cuda.device_count():
        raise DistributedError(f"LOCAL_RANK {local_rank} has no GPU: this node has "
                               f"{torch.cuda.device_count()}; start at most that many processes per node")
    return f"cuda:{local_rank}"


def run_device(device: str) -> str:
    """The device a run records in config.json: under torchrun a rank's cuda:LOCAL_RANK is the
    run's `cuda`, so that a later --resume, on any number of processes, gives each rank its own GPU
    (rank 0's cuda:0 would be refused on every other rank)."""
    if launched() and torch.device(device).type == "cuda":
        return "cuda"
    return device


def setup(device: str) -> World:
    """Join torchrun's process group (once) for work on `device`; a world of one without torchrun.

    NCCL for CUDA devices, gloo for CPU; every collective times out after $ADT_FAST_DIST_TIMEOUT
    seconds (600 by default), so a worker that died or failed ends the run with an error. Its
    caller has checked the environment (check_timeout).
    """
    if not launched():
        return World()
    if not dist.is_initialized():
        store, rank, size, attempt = _joined()
        device = torch.device(device)
        # Keys of each torchrun attempt apart: a restarted group must not read the addresses
        # its killed predecessor published (gloo then connects to a dead port).
        store = dist.PrefixStore(f"{_attempt_keys(attempt.token)}/group", store)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=size, timeout=timeout(),
                                device_id=device if device.type == "cuda" else None)
    return current()


@dataclass(frozen=True)
class Attempt:
    """One torchrun attempt of the worker group, as all its ranks agreed on it."""

    token: str  # rank 0's, fresh for the attempt
    restarted: bool  # some node's torchrun restarted its workers after a failure


def _attempt_keys(token: str) -> str:
    """The prefix of an attempt's keys in torchrun's store, which no earlier attempt used."""
    return f"adt_fast/{token}"


HANDSHAKE_POLL_S = 0.02


class Joined(NamedTuple):
    """What this process learnt on meeting the others: torchrun's store, its place, the attempt."""

    store: dist.Store
    rank: int
    size: int
    attempt: Attempt


@functools.lru_cache(maxsize=None)
def _joined() -> Joined:
    """Meet the other ranks in torchrun's store, once per process."""
    _check_launch_env()
    try:
        store, rank, size = next(dist.rendezvous("env://", timeout=timeout()))
    except dist.DistError as err:  # rank 0's port taken, or no rank 0 there: the setup's, not a peer's failure
        address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise DistributedError(f"the processes could not meet at $MASTER_ADDR:$MASTER_PORT ({address}): "
                               f"{type(err).__name__}: {err}") from None
    count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    return Joined(store, rank, size, _handshake(store, rank, size, count, timeout()))


def _handshake(store: dist.Store, rank: int, size: int, restart_count: int,
               limit: datetime.timedelta) -> Attempt:
    """Agree on this attempt with every rank through torchrun's store: rank 0's fresh token, and
    whether any rank's TORCHELASTIC_RESTART_COUNT is above 0.

    Across nodes the count is each node's agent's: a node whose workers failed is restarted with
    count + 1, one whose workers still ran only as a membership change, count unchanged. Keyed by
    their own counts, the nodes would part (gloo cannot connect) and disagree on resuming. The
    store (torchrun's agent's, by default) outlives attempts and holds their keys, so a rank
    accepts only what carries its own fresh nonce (rank 0's reply) or lies under the fresh token
    (the acks, the answer).
    DistributedError after `limit`: on rank 0 naming the ranks that did not answer, on another
    rank when rank 0 did not.
    """
    deadline = time.monotonic() + limit.total_seconds()
    if rank == 0:
        return _lead(store, size, restart_count, deadline, limit)
    nonce = uuid.uuid4().hex
    store.set(f"adt_fast/hello/{rank}", nonce)
    while True:
        if store.check([f"adt_fast/reply/{rank}"]):
            answered, _, token = store.get(f"adt_fast/reply/{rank}").decode().partition("|")
            if answered == nonce:  # not an earlier attempt's reply
                break
        if time.monotonic() > deadline:
            raise DistributedError(f"rank 0 did not answer rank {rank} within {limit.total_seconds():g} s "
                                   f"(${TIMEOUT_ENV}) when the processes met")
        time.sleep(HANDSHAKE_POLL_S)
    keys = _attempt_keys(token)
    store.set(f"{keys}/ack/{rank}", str(restart_count))
    return Attempt(token, store.get(f"{keys}/restarted") == b"1")


def _lead(store: dist.Store, size: int, restart_count: int, deadline: float,
          limit: datetime.timedelta) -> Attempt:
    """Rank 0's side of :func:`_handshake`: answer every rank's hello with the token until it acks."""
    token = uuid.uuid4().hex
    keys = _attempt_keys(token)
    counts, pending = [restart_count], list(range(1, size))
    while pending:
        for rank in list(pending):
            if store.check([f"{keys}/ack/{rank}"]):
                counts.append(int(store.get(f"{keys}/ack/{rank}")))
                pending.remove(rank)
            elif store.check([f"adt_fast/hello/{rank}"]):  # perhaps an earlier attempt's: answered again
                hello = store.get(f"adt_fast/hello/{rank}").decode()
                store.set(f"adt_fast/reply/{rank}", f"{hello}|{token}")
        if not pending:
            break
        if time.monotonic() > deadline:
            raise DistributedError(f"rank{'s' if len(pending) > 1 else ''} {', '.join(map(str, pending))} of "
                                   f"{size} did not join within {limit.total_seconds():g} s (${TIMEOUT_ENV})")
        time.sleep(HANDSHAKE_POLL_S)
    attempt = Attempt(token, any(count > 0 for count in counts))
    store.set(f"{keys}/restarted", "1" if attempt.restarted else "0")
    return attempt


@contextlib.contextmanager
def session(device: str) -> Iterator[World]:
    """:func:`setup` for the length of a command; leaves the group as it was found.

    A command that ends normally meets the other ranks before the group is torn down: on torch
    2.7.1 gloo's teardown hung for good on a rank whose peer had already left (2 of 6 runs of the
    sync-BatchNorm test; none of 10 with this barrier). On 2.6.0 it still hung once with it, in a
    restart test, which is one reason 2.6 is not supported. After an error no rank waits for the
    others, which may be dead.
    """
    owned = launched() and not dist.is_initialized()
    world = setup(device)
    try:
        yield world
        if owned:
            world.barrier()
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


def peer_failed(err: BaseException) -> str:
    """What a rank whose collective failed (collective_failed) says of it, in train's and eval's
    words alike, with torch's error in brackets as their out-of-memory lines show theirs. The process
    that failed printed its error, unless a signal killed it (SIGKILL, the kernel out of memory):
    then only torchrun's summary of the failure names it."""
    return (f"another process failed (see its error, or torchrun's summary for a process that was killed), or "
            f"the processes could not communicate ({type(err).__name__}: {err})")


def collective_failed(err: BaseException) -> bool:
    """Whether err is a failure of torch.distributed's communication (a collective, the store),
    most likely another rank's failure: a DistError, any error raised inside torch.distributed, or
    one of gloo's transport, which reports a peer that exited or timed out as a plain RuntimeError
    ('[.../gloo/transport/tcp/pair.cc:553] Connection closed by peer'), also where DDP's own code
    called it (its buffer broadcast, its gradient all-reduce in the backward). Your own code's
    failures are raised in its code, never there."""
    return (isinstance(err, dist.DistError) or "gloo/transport/" in str(err)
            or raised_in(err, Path(dist.__file__).parent))


# ------------------------------------------------------------------------------------------------
# A rank's share of a global batch
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchShard:
    """Rows [start, stop) of a global batch of `total` examples, for one of `size` ranks.

    `weight` turns the rank's mean loss into its share of the global mean once DDP has averaged
    the gradients over ranks: size * (stop - start) / total (1.0 when the batch splits evenly).
    """

    start: int
    stop: int
    total: int
    size: int

    @classmethod
    def of(cls, total: int, world: World) -> "BatchShard":
        """Contiguous, as even as possible (the first total mod size ranks get one more row)."""
        if total < world.size:
            raise DistributedError(f"a batch of {total} examples cannot feed {world.size} processes "
                                   f"(every rank needs at least one example)")
        base, extra = divmod(total, world.size)
        start = world.rank * base + min(world.rank, extra)
        return cls(start, start + base + (world.rank < extra), total, world.size)

    @property
    def weight(self) -> float:
        return self.size * (self.stop - self.start) / self.total

    def rows(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return tensor.narrow(dim, self.start, self.stop - self.start)

    def draw(self, sample: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """`sample(t)` draws random numbers shaped like t; run it for the global batch, keep ours."""
        full = like.new_empty((self.total, *like.shape[1:]))
        return self.rows(sample(full))

    def global_mean(self, values: torch.Tensor) -> torch.Tensor:
        """The global batch's mean of per-example values, given our rows' values. Differentiable:
        the backward all-reduces the gradient, so after DDP's share-weighted average every
        example's gradient through it is the one process's."""
        return _AllReduceSum.apply(values.sum()) / self.total

    def op_normals(self, like: torch.Tensor, num_samples: int, backend: str) -> torch.Tensor:
        """The sampling op's normals (k, B_local, *S) for our rows of the global batch."""
        from .ops.sample_and_entropy import draw_normals

        return draw_normals((self.total, *like.shape[1:]), num_samples, rows=(self.start, self.stop),
                            device=like.device, dtype=like.dtype, backend=backend)


# ------------------------------------------------------------------------------------------------
# Synchronised BatchNorm
# ------------------------------------------------------------------------------------------------
def has_batchnorm(*modules: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for module in modules for m in module.modules())


class _AllReduceSum(torch.autograd.Function):
    """dist.all_reduce (sum) as a differentiable function: the gradient of a sum over ranks is the
    sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the process group's whole batch for CPU tensors, which torch's SyncBatchNorm
    kernels (and DDP's check on them) do not serve.

    In training, the global batch's mean and (biased) variance come from two differentiable
    all-reduces: the sum and count, then the sum of squares about the
    global mean (two passes, so no cancellation); autograd all-reduces their gradients in the
    backward, as torch's CUDA implementation does. Running statistics are updated as
    nn.BatchNorm does, with the unbiased variance. In eval mode it is plain BatchNorm. The
    statistics are taken in float32 (float64 for float64 input) whatever the input's type, as
    nn.BatchNorm's kernels do under bf16 autocast, and the output has the input's type.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1, *[1] * (input.dim() - 2)]
        values = input.to(torch.promote_types(input.dtype, torch.float32))
        count = torch.tensor([input.numel() / input.shape[1]], dtype=values.dtype)
        totals = all_reduce(torch.cat([values.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centred = values - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * (n / (n - 1))).to(self.running_var.dtype), factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of `module` synchronised over the process group, in place.

    torch's converter keeps the same parameter and buffer tensors (optimisers built before stay
    valid). On CPU its nn.SyncBatchNorm layers are re-classed to CPUSyncBatchNorm, a sibling
    class over the same state.
    """
    module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if torch.device(device).type == "cpu":
        for layer in module.modules():
            if type(layer) is nn.SyncBatchNorm:
                layer.__class__ = CPUSyncBatchNorm
    return module
