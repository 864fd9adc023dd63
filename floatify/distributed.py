"""Several processes, one run: ``torchrun --nproc-per-node N -m floatify train ...``.

torchrun starts one process per device and tells each who it is through the environment (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``). This module holds what
``floatify train`` does with that, for your own scripts too:

* :func:`launch_from_environment` reads it (a plain ``python`` process is rank 0 of 1);
* :func:`local_device` gives each process its device (``cuda:LOCAL_RANK``, or the CPU);
* :func:`process_group` sets the process group up (NCCL on CUDA, gloo on CPU, with a timeout) and always
  tears it down, also on an error; with one process it does nothing;
* :func:`shard` (a ``DistributedSampler``) and :func:`wrap` (``DistributedDataParallel``, convert first);
* :func:`together` runs a block on every rank and, if any rank fails in it, stops them all: the failing rank
  raises its own error, the others :class:`RankFailed` with its message, so no rank waits forever for another;
* :func:`is_main_process`, :func:`barrier`, :func:`broadcast_text`.

Every rank draws the same λ per step (:class:`floatify.losses.LamSampler` depends only on seed and step), so
``floatify.fit`` trains a wrapped model unchanged. The library path of ``floatify train``::

    launch = floatify.distributed.launch_from_environment()
    device = floatify.distributed.local_device(launch)
    torch.manual_seed(0)                                   # identical initial weights on every rank
    model = floatify.convert(net).to(device)               # convert first, then wrap
    with floatify.distributed.process_group(launch, device):
        sampler = floatify.distributed.shard(train_set, seed=0)   # --batch-size is per process
        loader = DataLoader(train_set, batch_size=64, sampler=sampler, drop_last=True)
        floatify.fit(floatify.distributed.wrap(model, device), loader, checkpoint_dir=out)  # rank 0 writes
    # the group is gone; rank 0 alone saves or evaluates ``model``

Example (one process: no process group, every helper passes through):
    >>> import torch
    >>> from floatify.distributed import launch_from_environment, local_device, process_group, together, wrap
    >>> launch = launch_from_environment({})
    >>> launch.rank, launch.world_size, launch.is_main, launch.distributed
    (0, 1, True, False)
    >>> net = torch.nn.Linear(2, 2)
    >>> with process_group(launch, local_device(launch, "cpu")), together("setting up"):
    ...     same = wrap(net, torch.device("cpu")) is net
    >>> same
    True
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["Launch", "RankFailed", "DEFAULT_TIMEOUT", "launch_from_environment", "local_device", "process_group",
           "shard", "wrap", "together", "is_main_process", "barrier", "broadcast_text"]

# reason: a rank that dies or stalls must not keep the others waiting for torch's 30 minutes; ten covers the longest
# legitimate wait in a run (rank 0 writing a checkpoint while the others reach the next step)
DEFAULT_TIMEOUT = timedelta(minutes=10)
_TORCHRUN_HINT = "start the processes with torchrun (e.g. torchrun --nproc-per-node 2 -m floatify train ...)"


@dataclass(frozen=True)
class Launch:
    """Who this process is in a torchrun job (``rank`` 0 of ``world_size`` 1 for a plain process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process: a process group is needed."""
        return self.world_size > 1


class RankFailed(RuntimeError):
    """Another rank failed inside :func:`together`; ``rank`` and ``message`` say which and why."""

    def __init__(self, rank: int, message: str):
        super().__init__(f"rank {rank}: {message}")
        self.rank, self.message = rank, message


def _int_variable(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = environ.get(name)
    if text is None:
        if default is None:
            raise ValueError(f"WORLD_SIZE is set but {name} is not; {_TORCHRUN_HINT}")
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"the environment variable {name}={text!r} is not an integer; {_TORCHRUN_HINT}") from None


def launch_from_environment(environ: Mapping[str, str] | None = None) -> Launch:
    """This process's place in a torchrun job, from ``environ`` (default ``os.environ``).

    Without ``WORLD_SIZE`` it is a plain process (rank 0 of 1). Inconsistent values raise ValueError.

    >>> launch_from_environment({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
    ...                          "MASTER_PORT": "29500"})
    Launch(rank=1, world_size=2, local_rank=1, local_world_size=2)
    """
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return Launch()
    world = _int_variable(env, "WORLD_SIZE")
    rank, local_rank = _int_variable(env, "RANK"), _int_variable(env, "LOCAL_RANK")
    local_world = _int_variable(env, "LOCAL_WORLD_SIZE", default=world)  # reason: torchrun sets it; one machine
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < local_world <= world:
        raise ValueError(f"inconsistent torchrun environment (RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK="
                         f"{local_rank}, LOCAL_WORLD_SIZE={local_world}); {_TORCHRUN_HINT}")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if world > 1 and not env.get(name)]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {' and '.join(missing)} not set; {_TORCHRUN_HINT}")
    return Launch(rank, world, local_rank, local_world)


def local_device(launch: Launch, name: str | None = None) -> torch.device:
    """This process's device: ``name`` (default: cuda if available, else cpu), where several processes on CUDA
    mean one GPU each, ``cuda:LOCAL_RANK``. Raises ValueError for a device that cannot serve the job.

    >>> local_device(Launch(rank=1, world_size=2, local_rank=1, local_world_size=2), "cpu")
    device(type='cpu')
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device '{name}' ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' requested but CUDA is not available; use cpu")
    if not launch.distributed or device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ValueError(f"several processes train on cpu or cuda only, not '{name}'")
    if device.index is not None:
        raise ValueError(f"under torchrun each process uses cuda:LOCAL_RANK; pass 'cuda', not '{name}'")
    count = torch.cuda.device_count()
    if launch.local_world_size > count:
        raise ValueError(f"torchrun started {launch.local_world_size} processes on this machine but it has {count} "
                         f"GPU(s); pass --nproc-per-node {count} or fewer (one process per GPU)")
    return torch.device("cuda", launch.local_rank)


@contextlib.contextmanager
def process_group(launch: Launch, device: torch.device, *, timeout: timedelta = DEFAULT_TIMEOUT) -> Iterator[None]:
    """The job's process group for the block (NCCL on a CUDA ``device``, else gloo), destroyed when it ends.

    Nothing happens for a single process, or when a process group already exists (its owner tears it down).
    A collective that waits longer than ``timeout`` fails instead of hanging. Run every check that can fail
    before entering, so that a bad option stops every rank before any rank waits for another.
    """
    if not launch.distributed or dist.is_initialized():
        yield
        return
    cuda = device.type == "cuda"
    previous = torch.cuda.current_device() if cuda else None
    if cuda:
        torch.cuda.set_device(device)  # reason: NCCL binds the group to the current device
    try:
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout, rank=launch.rank,
                                world_size=launch.world_size, device_id=device if cuda else None)
        try:
            yield
        finally:
            dist.destroy_process_group()
    finally:
        if previous is not None:
            torch.cuda.set_device(previous)  # reason: leave the host process as it was


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True outside a process group and on its rank 0."""
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (nothing outside a process group)."""
    if _active():
        dist.barrier()


def shard(dataset, *, seed: int, shuffle: bool = True):
    """A ``DistributedSampler`` giving this rank its share of ``dataset`` (None outside a process group).

    Pass it as the DataLoader's ``sampler``; ``floatify.fit`` calls its ``set_epoch`` every epoch.
    """
    if not _active():
        return None
    from torch.utils.data import DistributedSampler

    return DistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(), shuffle=shuffle,
                              seed=seed)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel inside a process group (convert it first), else ``model`` itself.

    DDP copies rank 0's parameters and buffers to every rank; no ``find_unused_parameters`` is needed
    (:func:`floatify.float_loss` keeps every parameter in the graph).
    """
    if not _active():
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_text(text: str | None, src: int = 0) -> str | None:
    """``text`` of rank ``src`` on every rank (None stays None), sent as UTF-8 bytes: nothing is unpickled."""
    if not _active():
        return text
    device = _collective_device()
    payload = torch.tensor(list((text or "").encode("utf-8")), dtype=torch.uint8, device=device)
    size = torch.tensor([-1 if text is None else payload.numel()], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    if int(size) < 0:
        return None
    if dist.get_rank() != src:
        payload = torch.empty(int(size), dtype=torch.uint8, device=device)
    if int(size):
        dist.broadcast(payload, src)
    return bytes(payload.cpu().tolist()).decode("utf-8")


def _one_line(err: BaseException) -> str:
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


@contextlib.contextmanager
def together(what: str = "this step") -> Iterator[None]:
    """Every rank runs the block; if any rank raises in it, all ranks stop.

    The failing rank (the lowest, if several) re-raises its own error; every other rank raises
    :class:`RankFailed` carrying its one-line message. Every rank must enter the block (a rank that skips its
    body still enters), and the block itself must run no collective that only some ranks reach.
    Outside a process group it is a plain block.
    """
    if not _active():
        yield
        return
    error: Exception | None = None
    try:
        yield
    except Exception as err:  # reason: any error must reach the other ranks, or they wait for this one forever
        error = err
    world = dist.get_world_size()
    first = torch.tensor([world if error is None else dist.get_rank()], dtype=torch.int64,
                         device=_collective_device())
    dist.all_reduce(first, op=dist.ReduceOp.MIN)
    failed = int(first)
    if failed == world:
        return
    message = broadcast_text(_one_line(error) if error is not None else None, src=failed)
    dist.barrier()  # reason: every rank holds the message before any rank leaves and tears its group down
    if error is not None and dist.get_rank() == failed:
        raise error
    raise RankFailed(failed, message or f"{what} failed")
