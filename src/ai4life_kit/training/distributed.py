"""Multi-process training under ``torchrun``: one process per GPU (or per CPU worker), DDP averages gradients.

``torchrun --nproc-per-node 4 -m ai4life_kit train ...`` starts four copies of the command and tells each
its place through the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``). :class:`DistContext` reads
that, joins the process group and offers the few collectives the training loop needs. Started without
torchrun it is a single-process context whose collectives return their input, so the loop reads the same
either way and a plain run does exactly what it did before multi-process training existed.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as tdist

from ai4life_kit.errors import ConfigError, UserInputError

__all__ = ["DistContext", "launch_rank", "launch_world_size", "local_batch_size"]


def launch_world_size() -> int:
    """How many processes torchrun started for this run (1 when it was not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_rank() -> int:
    """This process's global rank as torchrun set it (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0")) if launch_world_size() > 1 else 0


def local_batch_size(batch_size: int, world_size: int) -> int:
    """Each process's share of the global ``batch_size`` (the spec's value, whatever the launch).

    Raises
    ------
    ConfigError
        If the batch cannot be split evenly: rounding would change the recipe's effective batch size.
    """
    if batch_size % world_size:
        raise ConfigError(
            f"training.batch_size={batch_size} cannot be split evenly over {world_size} processes: "
            f"use a multiple of {world_size}"
        )
    return batch_size // world_size


class DistContext:
    """Rank, world size, device and collectives of one training process.

    Parameters
    ----------
    device
        The device this process trains on (``cuda:{LOCAL_RANK}`` under torchrun on GPUs).
    rank, world_size
        This process's place in the group; ``0, 1`` for a single-process run.
    owns_group
        Whether :meth:`close` must destroy the process group (it was created here).

    Use :meth:`from_env` and ``with``: the process group is destroyed on leaving the block, also on
    errors, so that no process hangs or warns about a group that was never destroyed.
    """

    def __init__(self, device: torch.device, rank: int = 0, world_size: int = 1, owns_group: bool = False) -> None:
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self._owns_group = owns_group

    @classmethod
    def from_env(cls, device: torch.device) -> DistContext:
        """Join torchrun's process group if this process was launched by it with several processes.

        NCCL connects the processes when ``device`` is CUDA (each uses the GPU ``LOCAL_RANK``), gloo
        when it is the CPU (``--device cpu`` under torchrun). Thread settings are left alone: torchrun
        already sets ``OMP_NUM_THREADS=1`` for several processes unless the user chose a value.
        """
        world_size = launch_world_size()
        if world_size <= 1:
            return cls(device)
        local_rank = int(os.environ["LOCAL_RANK"])
        if device.type == "cuda":
            if local_rank >= torch.cuda.device_count():
                raise UserInputError(
                    f"torchrun started process {local_rank} on this machine but it has only "
                    f"{torch.cuda.device_count()} CUDA devices: use --nproc-per-node {torch.cuda.device_count()}"
                )
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)  # object collectives (broadcast_object_list) use the current device
            backend = "nccl"
        elif device.type == "cpu":
            backend = "gloo"
        else:
            raise UserInputError(f"--device {device.type}: multi-process training (torchrun) runs on CUDA or the CPU")
        if tdist.is_initialized():  # the caller (a script calling train()) set the group up: use, don't destroy
            return cls(device, tdist.get_rank(), tdist.get_world_size())
        _import_dynamo_first()
        tdist.init_process_group(backend, device_id=device if backend == "nccl" else None)
        return cls(device, tdist.get_rank(), tdist.get_world_size(), owns_group=True)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the only process that writes files and prints progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether several processes train together."""
        return self.world_size > 1

    def __enter__(self) -> DistContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Destroy the process group if this context created it."""
        if self._owns_group and tdist.is_initialized():
            # The DDP wrapper that held the group may sit in a reference cycle: free it first, or the group
            # outlives destroy_process_group (see _import_dynamo_first for what that does at exit).
            gc.collect()
            tdist.destroy_process_group()
        self._owns_group = False

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel when several processes train, else ``model`` itself.

        BatchNorm stays plain: DDP broadcasts rank 0's running statistics before every forward pass.
        """
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            if self.device.type == "cuda":
                tdist.barrier(device_ids=[self.device.index])
            else:
                tdist.barrier()

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over all processes (``tensor`` itself in a single process)."""
        if not self.distributed:
            return tensor
        total = tensor.detach().clone()
        tdist.all_reduce(total, op=tdist.ReduceOp.SUM)  # gloo has no AVG
        return total / self.world_size

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (pickled; ``obj`` is ignored on the other ranks)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        tdist.all_gather_object(gathered, obj)
        return gathered

    def run_on_main(self, fn: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Call ``fn`` on rank 0 only; then every process raises rank 0's error, if it had one.

        Doubles as a barrier: the other ranks go on only once rank 0's files are written, and a
        failure (an output that may not be replaced, a full disk) stops every process with the same
        one-line error instead of leaving them waiting for rank 0 in the next collective.
        """
        error: BaseException | None = None
        if self.is_main:
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # re-raised below, on every rank
                error = exc
        if self.distributed:
            shared = self.broadcast_object(_picklable(error) if self.is_main else None)
            if not self.is_main:
                error = shared
        if error is not None:
            if self.is_main:
                raise error
            raise error from None


def _import_dynamo_first() -> None:
    """Import ``torch._dynamo`` before the process group exists (DDP imports it anyway).

    Imported while a group exists, it keeps that group alive (torch 2.13, seen on gloo): then
    ``destroy_process_group`` cannot free it, the group's worker threads outlive the interpreter and,
    when one still holds a tensor at exit, the process aborts ("terminate called without an active
    exception", exit -6) after an otherwise complete run, in a few runs out of ten on a busy machine.
    """
    import torch._dynamo  # noqa: F401


def _picklable(error: BaseException | None) -> BaseException | None:
    """``error`` if it survives pickling (to send it to the other ranks), else a RuntimeError naming it."""
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__} on rank 0: {error}")
    return error
