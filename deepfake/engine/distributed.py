"""The rank seam: which process this is, the process group, and the few collectives training needs.

Launchers describe a distributed job through the environment: torchrun sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address; a SLURM job launched by submitit with several tasks sets
``SLURM_PROCID``/``SLURM_NTASKS``, which :func:`init_from_env` turns into the same variables with
submitit's own ``TorchDistributedEnvironment``. One process group serves every collective: NCCL for
CUDA tensors and gloo for CPU tensors (``cpu:gloo,cuda:nccl``), so Python objects (the run stamp, RNG
states, predictions) travel over gloo even on a GPU job. With one process nothing here communicates.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from deepfake.engine.launcher_env import env_rank, env_world_size

log = logging.getLogger(__name__)

# Collectives wait this long for a slow rank (a rank 0 writing a large checkpoint to a network disk).
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks() -> Ranks:
    """Where this process stands: from the process group once there is one, else from the launcher."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Ranks(env_rank(), env_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def init_from_env() -> Ranks:
    """Join the job's process group when the launcher started several processes; idempotent."""
    if dist.is_initialized() or env_world_size() <= 1:
        return ranks()
    if not os.environ.get("MASTER_ADDR"):  # a multi-task SLURM job: submitit knows the rendezvous
        from submitit.helpers import TorchDistributedEnvironment

        # Every process sees every GPU of its node and picks cuda:LOCAL_RANK itself.
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return ranks()


def shut_down() -> None:
    """Leave the process group once every rank got here (the collectives of training are over)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def device_for_rank(device: torch.device) -> torch.device:
    """One GPU per local rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` (and the current device)."""
    if device.type == "cuda" and ranks().distributed:
        device = torch.device("cuda", ranks().local_rank)
        torch.cuda.set_device(device)
    return device


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not dist.is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def all_gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def agree_max(*values: int) -> list[int]:
    """The largest of each value over all ranks (a stop signal or a failure seen by any rank)."""
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)  # a CPU tensor: over gloo on every backend
    return tensor.tolist()


def all_reduce_sum(*values: float) -> list[float]:
    if not dist.is_initialized():
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def together(step, *, main_only: bool = False):
    """Run ``step()`` (on rank 0 alone with ``main_only``) and fail on every rank if it failed on any.

    Setup raises its one-line errors before training's collectives: a rank that raised alone would
    leave the others waiting in the first collective until the timeout.
    """
    result, error = None, None
    if not main_only or ranks().is_main:
        try:
            result = step()
        except Exception as err:  # noqa: BLE001 - re-raised below, on this rank and (as a line) on the others
            error = err
    (any_failed,) = agree_max(int(error is not None))
    if error is not None:
        raise error
    if any_failed:
        from deepfake.errors import OtherRankFailed

        raise OtherRankFailed("another rank failed while setting up the run; its error is in its run log")
    return result


def lost_a_rank(error: BaseException) -> bool:
    """Whether a collective failed because another rank is gone (killed, out of memory, its node
    lost): NCCL raises DistBackendError, gloo a plain RuntimeError from its TCP transport."""
    if not dist.is_initialized() or dist.get_world_size() < 2:
        return False
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and "/gloo/" in str(error))


def backend() -> str | None:
    return dist.get_backend() if dist.is_initialized() else None


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank.

    DDP sends them at the start of each training forward, after which every rank updates its own
    copy with its own batch: without this, ranks would validate with statistics that differ from
    the ones rank 0 saves in the checkpoint.
    """
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
