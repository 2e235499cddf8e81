"""Data-parallel training on several processes: torch.distributed and DistributedDataParallel,
started by torchrun (``torchrun --nproc-per-node N -m nmt train ...``).

torchrun gives every process WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR / MASTER_PORT for
the rendezvous); without them, or with WORLD_SIZE 1, training is the plain single process.
Processes talk over NCCL on GPUs (each uses cuda:LOCAL_RANK) and gloo on CPUs.

The design (see ``Trainer``): ``--batch-size`` is the global batch. Every process makes the same
length-bucketed batches from the seed, and takes its contiguous slice of each (``nmt.data.shard``),
so the batch order does not depend on the number of processes. Each process scales its slice's
summed loss by ``world_size / sentences in the global batch``; DDP averages the gradients over
the processes, which makes the gradient that of one process on the whole batch (divided by its
sentences), and the learning rate needs no change. Process 0 alone validates and writes
checkpoints and metrics; its decisions (learning rate, best epoch, stopping, errors) are broadcast.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from nmt.errors import NMTError

log = logging.getLogger(__name__)
ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


class DistributedError(NMTError):
    """The processes could not start together, or one of them was lost."""


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise ValueError(f"WORLD_SIZE is set but {name} is not: start several training processes with torchrun "
                         "(torchrun --nproc-per-node N -m nmt train ...)")
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"the environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def is_lost_contact(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process went away or hung
    (gloo: "Connection closed by peer", a timeout; NCCL: a watchdog or remote error)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return False
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("gloo", "Gloo", "NCCL", "Connection closed", "Connection reset", "connection reset",
                                  "Timed out", "timed out", "Timeout", "ProcessGroup"))


@dataclass
class Processes:
    """This process's place among the training processes, and their communication."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device | None = None
    started: bool = False
    _sigterm: object = None  # the SIGTERM handler before ours, while ours is installed

    @classmethod
    def from_environment(cls) -> "Processes | None":
        """The processes torchrun started (its environment variables), or None for a single process."""
        if "WORLD_SIZE" not in os.environ:
            return None
        world_size, rank, local_rank = (_env_int(name) for name in ENV_VARS)
        if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
            raise ValueError(f"inconsistent torchrun environment: WORLD_SIZE={world_size}, RANK={rank}, LOCAL_RANK={local_rank}")
        if world_size == 1:
            return None  # (torchrun --nproc-per-node 1: the plain single process)
        return cls(rank, world_size, local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device_for(self, device: torch.device, asked: str) -> torch.device:
        """The device this process trains on: on CUDA cuda:LOCAL_RANK, one GPU per process."""
        if device.type != "cuda":
            return device
        if device.index is not None and str(asked) not in ("auto", "cuda"):
            raise ValueError(f"--device {asked}: under torchrun each process uses cuda:LOCAL_RANK; give --device cuda")
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ValueError(f"torchrun started more processes on this machine than it has GPUs ({count}): "
                             f"LOCAL_RANK {self.local_rank} has none; use --nproc-per-node {count} or fewer")
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device, timeout_s: float, stopped: str = "") -> None:
        """Join the process group (NCCL on GPUs, gloo on CPUs) through torchrun's rendezvous.
        From then on SIGTERM (torchrun's, when another process failed) is a DistributedError,
        with ``stopped`` appended, rather than a silent end."""
        self.device = device
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ValueError(f"{name} is not set: start several training processes with torchrun "
                                 "(torchrun --nproc-per-node N -m nmt train ...)")
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"process {self.rank} of {self.world_size} could not join the others over "
                                   f"{backend} at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} "
                                   f"({_first_line(exc)})") from None
        self.started = True
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)
            self._sigterm = previous if previous is not None else signal.SIG_DFL
            message = (f"process {self.rank} of {self.world_size} was stopped (SIGTERM). torchrun stops every "
                       f"process when one fails: see the first error. {stopped}").rstrip()
            signal.signal(signal.SIGTERM, partial(_stop, message))
        log.info("process %d of %d (local %d) on %s, %s", self.rank, self.world_size, self.local_rank, device, backend)

    def close(self) -> None:
        if self._sigterm is not None:
            signal.signal(signal.SIGTERM, self._sigterm)
            self._sigterm = None
        if self.started:
            self.started = False
            with contextlib.suppress(Exception):
                dist.destroy_process_group()

    # ---- collectives (every process calls each, in the same order) ---------------------
    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DDP: its backward averages the gradients over the processes."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def all_sum(self, values: list) -> list[float]:
        """The sums over the processes of numbers or device scalars (one collective)."""
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(()) for v in values])
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj):
        """Process 0's ``obj``, on every process."""
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        """Every process's ``obj``, by rank."""
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    @contextlib.contextmanager
    def lost_contact_is_an_error(self, where: str):
        """Turn a collective that failed because another process died or hung into a clear error."""
        try:
            yield
        except Exception as exc:
            if not is_lost_contact(exc):
                raise
            raise DistributedError(
                f"process {self.rank} of {self.world_size} lost contact with the others ({_first_line(exc)[:300]}). "
                f"Another process stopped, was killed, ran out of memory or hung (--dist-timeout): see its log. {where}") from None


def _stop(message: str, signum, frame) -> None:
    raise DistributedError(message)


def _first_line(exc: BaseException) -> str:
    """The gist of an error: its first line, without gloo's source location and advice."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line)
    return line.split(". This is typically caused by")[0]
