"""torch.distributed helpers shared by multi-process training and the sharded index: starting the
process group with a bounded timeout, gathering tensors with their gradients, and batch
normalisation over the global batch on any device (gloo on CPU included).

Training under ``torchrun --nproc_per_node N -m cibhash_ext train ...``: every process trains on
its part of each global batch of N x batch_size images; gradients are averaged by
DistributedDataParallel; the codes are all-gathered with their gradients so the contrastive loss
sees the global batch; batch-norm statistics are taken over the global batch. The gradient of the
mean loss over ranks is then the gradient one process would compute on the global batch.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "init_process_group",
    "init_from_env",
    "rank",
    "world_size",
    "is_distributed",
    "all_gather_with_grad",
    "all_reduce_mean",
    "broadcast",
    "GlobalBatchNorm",
    "convert_batchnorm",
]


def init_process_group(backend: str | None = None, timeout_s: float = 60.0, **kwargs) -> None:
    """``torch.distributed.init_process_group`` with a bounded timeout.

    Args:
        backend (str, optional): "gloo" or "nccl"; default nccl when CUDA is available, else gloo.
        timeout_s (float): timeout of every collective in seconds, after which a rank waiting on a
            dead or absent peer raises instead of hanging.
        **kwargs: passed on (init_method, rank, world_size, ...; default env:// from MASTER_ADDR,
            MASTER_PORT, RANK, WORLD_SIZE).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)


def init_from_env(device: str = "cpu", timeout_s: float = 1800.0) -> bool:
    """Joins the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1).

    gloo for a CPU device, NCCL for CUDA (each process then uses the GPU numbered LOCAL_RANK).
    Does nothing for a single process or when the group already exists.

    Args:
        device (str): "cpu" or "cuda".
        timeout_s (float): collective timeout; long enough for rank 0's evaluation at the end.

    Returns:
        bool: whether this process is part of a group of more than one process.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda under torchrun, but no CUDA device is visible")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    init_process_group("nccl" if on_cuda else "gloo", timeout_s)
    return True


def is_distributed(group=None) -> bool:
    """Whether a process group of more than one process exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group=None) -> int:
    """This process's rank, 0 without a process group."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group=None) -> int:
    """The number of processes, 1 without a process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def all_reduce_mean(tensor: Tensor, group=None) -> Tensor:
    """The mean of ``tensor`` over the ranks (a new tensor, no gradient); ``tensor`` itself alone."""
    if not is_distributed(group):
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out, group=group)
    return out / world_size(group)


def broadcast(tensor: Tensor, src: int = 0, group=None) -> Tensor:
    """Rank ``src``'s ``tensor`` on every rank (filled in place on the others; the same shape and dtype
    on every rank); ``tensor`` itself without a process group."""
    if is_distributed(group):
        dist.broadcast(tensor, src, group=group)
    return tensor


class _AllGather(torch.autograd.Function):
    """Concatenation of every rank's rows; backward: the sum over ranks of the gradients for this rank's rows.
    (torch.distributed.nn.functional does the same but is deprecated; this needs only all_gather and all_reduce,
    which gloo and NCCL both have.)"""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group, ctx.rows = group, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, tensor.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        first = dist.get_rank(ctx.group) * ctx.rows
        return grad[first : first + ctx.rows], None


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks; backward: the sum over ranks of the gradients (every rank's output depends on every input)."""

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        ctx.group = group
        out = tensor.contiguous().clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_gather_with_grad(tensor: Tensor, group=None) -> Tensor:
    """The tensors of every rank concatenated along dim 0 in rank order, differentiable: the gradient
    reaching each rank's rows is the sum of the gradients every rank computed for them.

    All ranks must pass tensors of the same shape. Without a process group, returns ``tensor``.
    """
    if not is_distributed(group):
        return tensor
    return _AllGather.apply(tensor, group)


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalisation whose training statistics are those of the global batch across ranks.

    Unlike ``torch.nn.SyncBatchNorm`` it runs on CPU (gloo) as well as CUDA: per-channel sums are
    all-reduced with autograd (two passes, mean then squared deviations, for accuracy), so the
    forward and backward equal those of one process holding the whole batch. Without a process
    group, or in eval mode, it is ``nn.BatchNorm{1,2}d``. Every rank must call it the same number
    of times (as for every collective) with the same number of channels.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, group=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.group = group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input [N, C, ...], got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed(self.group)):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float()
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]), self.group)
        n = sums[-1]
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims), self.group) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1)) if float(n) > 1 else var
                self.running_mean.mul_(1 - momentum).add_(mean.to(self.running_mean.dtype), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.to(self.running_var.dtype), alpha=momentum)
        return y.to(input.dtype)


def convert_batchnorm(module: nn.Module, group=None) -> nn.Module:
    """Replaces every BatchNorm1d/2d/3d of ``module`` (in place, weights and statistics kept) by a
    :class:`GlobalBatchNorm`, and returns the module. State-dict keys are unchanged, so checkpoints
    load into the plain model; layers in eval mode (frozen backbones) behave as before."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, group)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        new.to(next(iter(module.buffers()), torch.empty(0)).device)
        for p_new, p_old in zip(new.parameters(), module.parameters()):
            p_new.requires_grad_(p_old.requires_grad)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, group))
    return module
