"""Thin torch.distributed glue. One process is the same code path with world size 1.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT); ``init`` reads them. ``accelerate launch``
(huggingface/accelerate, ``commands/launch.py``) starts its multi-GPU processes through the same
``torch.distributed.run`` and so works as torchrun does; its own precision and compile settings
(ACCELERATE_MIXED_PRECISION, ACCELERATE_DYNAMO_BACKEND) are not read here, so asking for them is refused rather than
ignored. ``unwrap`` is the one place that reaches into a DDP/compile wrapper.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from repa.models.sit import FeaturesView


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str | None = None) -> DistInfo:
    """Start the process group when launched by torchrun (NCCL on GPUs, gloo on CPU); pick this rank's device."""
    check_launcher()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


ACCELERATE_SETTINGS = {"ACCELERATE_MIXED_PRECISION": ("no", "--precision bf16|fp16"),
                       "ACCELERATE_DYNAMO_BACKEND": ("no", "--compile")}


def check_launcher() -> None:
    """ConfigError when ``accelerate launch`` asked for mixed precision or torch.compile, which repa sets by flags."""
    from repa.config import ConfigError
    for name, (off, flag) in ACCELERATE_SETTINGS.items():
        value = os.environ.get(name, off)
        if value.lower() not in (off, ""):
            raise ConfigError(f"accelerate launch: {name}={value} is not read by repa (it launches like torchrun, "
                              f"no more); drop accelerate's option and give repa's {flag}, or use torchrun")


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside DistributedDataParallel, torch.compile and ``FeaturesView`` wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, FeaturesView):
            model = model.net
        else:
            return model


def all_gather_object(obj):
    """[obj of rank 0, obj of rank 1, ...]; [obj] in a single process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (a copy); the tensor itself in a single process."""
    if not dist.is_initialized():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / dist.get_world_size()


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---- FSDP (fully sharded data parallel, torch's fully_shard) ---------------------------------------------------

def shard(net: torch.nn.Module) -> torch.nn.Module:
    """Shard ``net`` across ranks with FSDP2: each transformer block, then the root (embeddings, final layer).

    ``forward_features`` (the training entry point) is registered as a forward method, so the root's parameters
    are gathered for it as for ``forward``.
    """
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    for block in net.blocks:
        fully_shard(block)
    fully_shard(net)
    if hasattr(net, "forward_features"):
        register_fsdp_forward_method(net, "forward_features")
    return net


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(net: torch.nn.Module) -> dict:
    """The complete (unsharded, CPU) state dict of a sharded module; a collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(net, options=_options(cpu_offload=True))


def full_optimizer_state(net: torch.nn.Module, opt) -> dict:
    """The complete optimizer state dict (keys are parameter names) of a sharded module; a collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(net, opt, options=_options(cpu_offload=True))


def load_full_model_state(net: torch.nn.Module, state: dict) -> None:
    """Load a complete state dict into a sharded module (each rank keeps its shard)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict
    set_model_state_dict(net, state, options=_options())


def load_full_optimizer_state(net: torch.nn.Module, opt, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(net, opt, state, options=_options())


def local_tensors(params) -> list[torch.Tensor]:
    """This rank's shards of (possibly sharded) parameters, for elementwise updates such as the EMA."""
    return [p.to_local() if hasattr(p, "to_local") else p for p in params]
