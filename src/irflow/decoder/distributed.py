"""Data parallelism of the unified decoder trainer across torchrun processes.

Under torchrun (``irflow.launch``: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set) the trainer runs
in ``W`` processes, one model replica each: gloo on CPU, NCCL on CUDA (one GPU per process,
``cuda:<LOCAL_RANK>``). Every process draws the same global batch from the same seeded samplers
and encodes only its share of it (contiguous slices of the queries, documents or pairs,
:func:`shard`); the outputs (embeddings, scores) of the other processes are gathered without
gradient (:func:`gather_rows`), so the loss is that of the *whole* global batch (InfoNCE
contrasts every query with the documents of every process) and backpropagating it gives each
process the gradient of its own rows. Summing the processes' gradients (one all-reduce of the
flat gradient per task and optimizer step) is then the single-process gradient of the global
batch, to float rounding.

**Why not the ``DistributedDataParallel`` wrapper**: it all-reduces inside ``backward`` hooks,
once per backward pass, and averages. The trainer needs each task's gradient separately
(cosines, PCGrad), runs several backward passes per optimizer step (gradient accumulation,
gradient caching's second pass) and, with MoE-LoRA, leaves experts unused in a pass (the
wrapper then needs ``find_unused_parameters``). Reducing the flat per-task gradient once, after
all of a step's backward passes, is the wrapper's gradient synchronisation done once per task;
an unused parameter contributes zeros. The initial trainable weights are broadcast from rank 0
as the wrapper does, and the final ones are checked to be identical on every process.
"""

from __future__ import annotations

import contextlib
import os

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def process_device(device: str) -> str:
    """This process's device: ``cuda:<LOCAL_RANK>`` for a bare ``cuda`` under torchrun."""
    if world_size() > 1 and device == "cuda":
        device = f"cuda:{local_rank()}"
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))
    return device


@contextlib.contextmanager
def process_group(device: str):
    """The default process group for the block when ``WORLD_SIZE > 1`` (NCCL on CUDA, gloo on
    CPU), destroyed after if this block created it."""
    import torch.distributed as dist

    created = False
    if world_size() > 1 and not dist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
        created = True
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()


def sizes(n: int, world: int) -> list[int]:
    """Rows of each process's share of ``n`` rows (the first ``n % world`` take one more)."""
    return [n // world + (1 if r < n % world else 0) for r in range(world)]


def shard(n: int, world: int, who: int) -> slice:
    """Process ``who``'s contiguous share of ``n`` rows."""
    counts = sizes(n, world)
    start = sum(counts[:who])
    return slice(start, start + counts[who])


def gather_rows(local: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Every process's rows in rank order, this process's own with their autograd history (the
    others' without): the loss of the result backpropagates into this process's rows only."""
    import torch.distributed as dist

    world, me = len(counts), dist.get_rank()
    longest = max(counts)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: counts[me]] = local.detach()
    pieces = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(pieces, padded)
    rows = [pieces[r][: counts[r]] for r in range(world)]
    rows[me] = local
    return torch.cat(rows)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def mean_scalar(value: float, device) -> float:
    """The mean over processes of a float."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    return float(all_reduce_sum(tensor)[0]) / world_size()


def all_gather_object(value):
    import torch.distributed as dist

    out = [None] * world_size()
    dist.all_gather_object(out, value)
    return out


def broadcast_params(params: list[torch.nn.Parameter]) -> None:
    import torch.distributed as dist

    with torch.no_grad():
        for param in params:
            dist.broadcast(param.data, src=0)


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
