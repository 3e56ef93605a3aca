"""CIBHash training objective: NT-Xent over binary codes plus a symmetric Bernoulli KL term.

Qiu et al., "Unsupervised Hashing with Contrastive Information Bottleneck", IJCAI 2021 (arXiv
2105.06138), Eq. 5-9. The layer producing the codes is :class:`cibhash_ext.layers.StochasticBinaryLayer`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cibhash_ext import distributed

__all__ = [
    "CIBHashLoss",
    "TrainingObjective",
    "nt_xent_codes",
    "nt_xent_features",
    "bit_balance_penalty",
    "bernoulli_kl_logits",
    "bernoulli_kl_probs",
    "symmetric_kl_stop_gradient",
]


def _check_pair(name1: str, a: Tensor, name2: str, b: Tensor) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"{name1} and {name2} must be tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name1} and {name2} must be 2-D tensors of the same shape [N, L], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not a.is_floating_point() or not b.is_floating_point():
        raise TypeError(f"{name1} and {name2} must be floating point, got {a.dtype} and {b.dtype}")


def nt_xent_codes(codes1: Tensor, codes2: Tensor, temperature: float = 0.3, global_batch: bool = False, group=None,
                  negatives: Tensor | None = None, debias: float = 0.0) -> Tensor:
    """NT-Xent (normalised temperature-scaled cross entropy) over two views' binary codes.

    The 2N codes of a batch are mapped to +-1 vectors ``s = 2b - 1``; the similarity of two codes
    is their cosine ``s_i . s_j / L = 1 - 2 * hamming(b_i, b_j) / L``. Each code's positive is the
    other view of the same image and its negatives are the other 2N - 2 codes:

        loss_i = -log( exp(sim(i, pos(i)) / tau) / sum_{k != i} exp(sim(i, k) / tau) ),

    averaged over the 2N anchors (Qiu et al. 2021, Eq. 8; Chen et al. 2020, SimCLR).

    With ``global_batch`` inside a torch.distributed group of R processes, the codes of every rank
    are all-gathered with their gradients: this rank's 2N anchors are contrasted against all 2RN
    codes, so the mean of the R ranks' losses (what DistributedDataParallel's gradient averaging
    optimises) is the loss of one process holding the R x N images.

    Args:
        codes1 (Tensor[N, L], floating): codes of the first view, in {0, 1} (or relaxed in [0, 1]).
        codes2 (Tensor[N, L], floating): codes of the second view, same shape.
        temperature (float): tau > 0.
        global_batch (bool): use the other ranks' codes as negatives too (no effect without a group).
        group (ProcessGroup, optional): the group to gather over (default: the whole world).
        negatives (Tensor[M, L], optional): more negatives for every anchor, such as a memory bank of
            recent codes (MeCoQ, Wang et al., AAAI 2022); no gradient flows into them.
        debias (float): tau+ of the debiased contrastive loss (Chuang et al., NeurIPS 2020): the
            assumed share of same-class images among the negatives; 0 is the plain NT-Xent. The
            negative term is estimated as ``max((sum_neg - tau+ * M * pos) / (1 - tau+), M e^{-1/tau})``
            with M negatives per anchor (cosines of +-1 codes are >= -1).

    Returns:
        Tensor[], float32: the mean loss over this rank's anchors.
    """
    _check_pair("codes1", codes1, "codes2", codes2)
    if negatives is not None and (negatives.dim() != 2 or negatives.shape[1] != codes1.shape[1]):
        raise ValueError(f"negatives must be [M, {codes1.shape[1]}] codes, got shape {tuple(negatives.shape)}")
    extra = None if negatives is None else negatives.detach().float() * 2 - 1
    return _nt_xent(codes1.float() * 2 - 1, codes2.float() * 2 - 1, codes1.shape[1], temperature, global_batch,
                    group, extra, debias, "nt_xent_codes")


def nt_xent_features(features1: Tensor, features2: Tensor, temperature: float = 0.2, global_batch: bool = False,
                     group=None) -> Tensor:
    """NT-Xent over two views' continuous features (SimCLR's loss, Chen et al. 2020): the similarity
    of two rows is their cosine, and each row's positive is the other view of the same image.

    The same loss as :func:`nt_xent_codes` with cosines of feature vectors in place of cosines of
    +-1 codes; the optional auxiliary loss on the backbone features (``TrainConfig.feature_loss``).

    Args:
        features1 (Tensor[N, D], floating): features of the first view (any scale; rows are normalised).
        features2 (Tensor[N, D], floating): features of the second view, same shape.
        temperature (float): tau > 0.
        global_batch (bool): contrast against every rank's features too (see :func:`nt_xent_codes`).
        group (ProcessGroup, optional): the group to gather over (default: the whole world).

    Returns:
        Tensor[], float32: the mean loss over this rank's anchors.
    """
    _check_pair("features1", features1, "features2", features2)
    return _nt_xent(F.normalize(features1.float(), dim=1), F.normalize(features2.float(), dim=1), 1, temperature,
                    global_batch, group, None, 0.0, "nt_xent_features")


def _nt_xent(rows1: Tensor, rows2: Tensor, scale: float, temperature: float, global_batch: bool, group,
             negatives: Tensor | None, debias: float, name: str) -> Tensor:
    """The NT-Xent of :func:`nt_xent_codes` on rows whose dot products divided by ``scale`` are the
    cosines (+-1 codes with scale L, unit vectors with scale 1); ``negatives`` rows the same way."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= debias < 1:
        raise ValueError(f"debias must be in [0, 1), got {debias}")
    n = rows1.shape[0]
    if n < 2:
        raise ValueError(f"{name} needs a batch of at least 2 images, got {n}")
    world, first = 1, 0
    if global_batch and distributed.is_distributed(group):
        world, first = distributed.world_size(group), distributed.rank(group) * n
        rows1 = distributed.all_gather_with_grad(rows1.contiguous(), group)
        rows2 = distributed.all_gather_with_grad(rows2.contiguous(), group)
    total = world * n  # images in the (global) batch; rows [first, first + n) are this rank's
    rows = torch.cat([rows1, rows2])
    mine = torch.arange(first, first + n, device=rows.device)
    anchors = torch.cat([mine, mine + total])
    if negatives is not None:
        rows = torch.cat([rows, negatives])
    sim = rows[anchors] @ rows.t() / (scale * temperature)
    # An anchor is never its own negative.
    sim = sim.index_put((torch.arange(2 * n, device=sim.device), anchors), sim.new_tensor(float("-inf")))
    positives = torch.cat([mine + total, mine])
    if debias == 0:
        return F.cross_entropy(sim, positives)
    index = torch.arange(2 * n, device=sim.device)
    pos = sim[index, positives]
    negative_mask = torch.ones_like(sim, dtype=torch.bool)
    negative_mask[index, anchors] = False
    negative_mask[index, positives] = False
    count = sim.shape[1] - 2
    # In units of exp(pos): log(pos + Ng) - log(pos), computed stably from the similarities.
    neg_sum = torch.where(negative_mask, (sim - pos[:, None]).exp(), sim.new_zeros(())).sum(dim=1)
    floor = count * torch.exp(-1.0 / temperature - pos)
    ng = torch.maximum((neg_sum - debias * count) / (1 - debias), floor)
    return torch.log1p(ng).mean()


def bit_balance_penalty(codes: Tensor) -> Tensor:
    """Mean over bits of ``(mean over the batch of the bit - 1/2)^2``, times 4 (so in [0, 1]): 0 when
    every bit is set for half the batch. The bit-balance term of Weighted Contrastive Hashing
    (Yu et al., ACCV 2022) and of the balanced-code literature since Weiss et al. 2008.

    Args:
        codes (Tensor[N, L], floating): codes in {0, 1} (with the binary layer's gradient).

    Returns:
        Tensor[], float32.
    """
    if not isinstance(codes, Tensor) or codes.dim() != 2 or not codes.is_floating_point():
        raise TypeError(f"codes must be a 2-D floating tensor [N, L], got {type(codes).__name__}")
    return 4 * (codes.float().mean(dim=0) - 0.5).pow(2).mean()


def bernoulli_kl_logits(logits: Tensor, target_logits: Tensor) -> Tensor:
    """KL(Bernoulli(sigmoid(logits)) || Bernoulli(sigmoid(target_logits))), summed over bits.

    Computed from the logits with log-sigmoid, so it is finite for saturated probabilities.

    Args:
        logits (Tensor[N, L], floating): logits of the distribution p.
        target_logits (Tensor[N, L], floating): logits of the distribution q.

    Returns:
        Tensor[N], float32: the KL divergence of each row.
    """
    _check_pair("logits", logits, "target_logits", target_logits)
    z, t = logits.float(), target_logits.float()
    p = torch.sigmoid(z)
    # log p - log q and log(1 - p) - log(1 - q), with log(1 - sigmoid(x)) = logsigmoid(-x).
    kl = p * (F.logsigmoid(z) - F.logsigmoid(t)) + (1 - p) * (F.logsigmoid(-z) - F.logsigmoid(-t))
    return kl.sum(dim=1)


def bernoulli_kl_probs(p: Tensor, q: Tensor, eps: float = 1e-8) -> Tensor:
    """KL(Bernoulli(p) || Bernoulli(q)) from probabilities, summed over bits, as the public code has it.

    The public CIBHash code adds ``eps`` inside every logarithm; this reproduces it exactly.

    Args:
        p (Tensor[N, L], floating): probabilities of the first distribution.
        q (Tensor[N, L], floating): probabilities of the second distribution.
        eps (float): added inside each logarithm.

    Returns:
        Tensor[N], float32: the KL divergence of each row.
    """
    _check_pair("p", p, "q", q)
    p, q = p.float(), q.float()
    kl = p * (torch.log(p + eps) - torch.log(q + eps)) + (1 - p) * (torch.log(1 - p + eps) - torch.log(1 - q + eps))
    return kl.sum(dim=1)


def symmetric_kl_stop_gradient(logits1: Tensor, logits2: Tensor, eps: float | None = None) -> Tensor:
    """Symmetric Bernoulli KL between two views with a stop-gradient on the target side.

        L_KL = 0.5 * [ KL(p1 || sg(p2)) + KL(p2 || sg(p1)) ],  p = sigmoid(z),

    summed over bits and averaged over the batch (Qiu et al. 2021, Eq. 9 and the public code).

    Args:
        logits1 (Tensor[N, L], floating): hash logits of the first view.
        logits2 (Tensor[N, L], floating): hash logits of the second view.
        eps (float, optional): None computes the KL exactly from the logits; a number uses the public
            code's form, ``log(p + eps)`` on probabilities.

    Returns:
        Tensor[], float32: the mean loss.
    """
    _check_pair("logits1", logits1, "logits2", logits2)
    if eps is None:
        kl12 = bernoulli_kl_logits(logits1, logits2.detach())
        kl21 = bernoulli_kl_logits(logits2, logits1.detach())
    else:
        p1, p2 = torch.sigmoid(logits1.float()), torch.sigmoid(logits2.float())
        kl12 = bernoulli_kl_probs(p1, p2.detach(), eps)
        kl21 = bernoulli_kl_probs(p2, p1.detach(), eps)
    return 0.5 * (kl12.mean() + kl21.mean())


class CIBHashLoss(nn.Module):
    """CIBHash loss ``L = L_contrastive + beta * L_KL`` (Qiu et al. 2021, Eq. 10), with three options
    from later unsupervised hashing methods, each off by default (the paper's loss).

    Args:
        temperature (float): NT-Xent temperature tau (paper default 0.3).
        beta (float): weight of the KL term (paper default 0.001).
        kl_eps (float, optional): None for the exact KL from the logits (default); 1e-8 reproduces the
            public code's ``log(p + 1e-8)`` form. The two differ only for saturated probabilities.
        global_batch (bool): under torch.distributed, contrast against every rank's codes
            (see :func:`nt_xent_codes`); the KL term is per image and needs no exchange.
        balance (float): weight of :func:`bit_balance_penalty` on each view's codes (0: off).
        debias (float): tau+ of the debiased contrastive loss (see :func:`nt_xent_codes`; 0: off).
        memory (int): size of a memory bank of the most recent codes (first views), used as extra
            negatives (MeCoQ; 0: off). The bank is part of the module's state (``state_dict``).
    """

    def __init__(self, temperature: float = 0.3, beta: float = 1e-3, kl_eps: float | None = None,
                 global_batch: bool = False, balance: float = 0.0, debias: float = 0.0, memory: int = 0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if kl_eps is not None and not kl_eps > 0:
            raise ValueError(f"kl_eps must be None or > 0, got {kl_eps}")
        if not balance >= 0 or not 0 <= debias < 1 or memory < 0:
            raise ValueError(f"expected balance >= 0, 0 <= debias < 1 and memory >= 0, got {balance}, {debias}, {memory}")
        self.temperature = float(temperature)
        self.beta = float(beta)
        self.kl_eps = kl_eps
        self.global_batch = bool(global_batch)
        self.balance, self.debias, self.memory = float(balance), float(debias), int(memory)
        self.bank: Tensor | None = None

    def forward(self, codes1: Tensor, codes2: Tensor, logits1: Tensor, logits2: Tensor) -> Tensor:
        """Computes the loss of one batch (and, with a memory bank, enqueues the batch's codes).

        Args:
            codes1 (Tensor[N, L], floating): binary codes of view 1 (output of the binary layer).
            codes2 (Tensor[N, L], floating): binary codes of view 2.
            logits1 (Tensor[N, L], floating): hash logits of view 1 (the codes' input).
            logits2 (Tensor[N, L], floating): hash logits of view 2.

        Returns:
            Tensor[], float32: the loss, the sum of :meth:`terms` in their order.
        """
        return _sum_in_order(self.terms(codes1, codes2, logits1, logits2))

    def terms(self, codes1: Tensor, codes2: Tensor, logits1: Tensor, logits2: Tensor) -> dict[str, Tensor]:
        """The weighted terms of the loss of one batch, by name: ``nt_xent``, then ``kl`` (beta > 0) and
        ``balance`` (balance > 0); with a memory bank, the batch's codes are enqueued. Arguments as
        :meth:`forward`."""
        negatives = self.bank if self.memory and self.bank is not None and len(self.bank) else None
        terms = {"nt_xent": nt_xent_codes(codes1, codes2, self.temperature, self.global_batch, negatives=negatives,
                                          debias=self.debias)}
        if self.beta != 0:
            terms["kl"] = self.beta * symmetric_kl_stop_gradient(logits1, logits2, self.kl_eps)
        if self.balance != 0:
            terms["balance"] = self.balance * 0.5 * (bit_balance_penalty(codes1) + bit_balance_penalty(codes2))
        if self.memory and self.training:
            recent = codes1.detach().to(torch.uint8)
            self.bank = recent[-self.memory :] if self.bank is None else torch.cat([self.bank, recent])[-self.memory :]
        return terms

    def get_extra_state(self):
        return {"bank": self.bank}

    def set_extra_state(self, state) -> None:
        self.bank = state["bank"]

    def extra_repr(self) -> str:
        options = "".join(f", {k}={getattr(self, k)}" for k in ("balance", "debias", "memory") if getattr(self, k))
        return (f"temperature={self.temperature}, beta={self.beta}, kl_eps={self.kl_eps}, "
                f"global_batch={self.global_batch}{options}")


def _sum_in_order(terms: dict[str, Tensor]) -> Tensor:
    """The sum of the terms, added left to right (the order fixes the float result)."""
    values = iter(terms.values())
    total = next(values)
    for value in values:
        total = total + value
    return total


class TrainingObjective(nn.Module):
    """What a training step minimises: the CIBHash loss of each code length on the two views' codes,
    plus, when on, the feature loss (:func:`nt_xent_features` on the projections of the backbone
    features; SimCLR's loss, Chen et al. 2020), as one named loss per term (dinov2's ``loss_dict``).

    Args:
        criteria (dict[int, CIBHashLoss]): the loss of each code length.
        binary (nn.Module): the model's binary layer (codes from logits, sampled while training).
        feature_loss (float): weight of the feature loss (0: off).
        feature_temperature (float): its temperature.
        global_batch (bool): the feature loss's negatives span every process's batch.

    Example:
        >>> objective = TrainingObjective({16: CIBHashLoss(0.3)}, model.binary)
        >>> losses = objective(model(images), None, generator)   # {"nt_xent_16": ..., "kl_16": ...}
    """

    def __init__(self, criteria: dict[int, CIBHashLoss], binary: nn.Module, feature_loss: float = 0.0,
                 feature_temperature: float = 0.1, global_batch: bool = True) -> None:
        super().__init__()
        self.criteria = nn.ModuleDict({str(v): c for v, c in criteria.items()})
        self.binary = binary
        self.feature_loss, self.feature_temperature = float(feature_loss), float(feature_temperature)
        self.global_batch = bool(global_batch)

    def forward(self, logits: dict[int, Tensor], projections: Tensor | None,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of one batch whose first half of rows is view 1 and second half view 2.

        Args:
            logits (dict[int, Tensor[2N, L]]): hash logits per code length.
            projections (Tensor[2N, P], optional): projections of the backbone features (the
                feature loss; None when it is off).
            generator (torch.Generator, optional): the binary layer's draws.

        Returns:
            (Tensor[], float32, dict[str, Tensor[]]): the total, and each term by name
            (``nt_xent_<L>``, ``kl_<L>``, ``balance_<L>``, ``features``); the total adds them
            length by length, in the order of ``logits``.
        """
        total, terms = None, {}
        for length, z in logits.items():
            n = len(z) // 2
            z1, z2 = z[:n], z[n:]
            parts = self.criteria[str(length)].terms(self.binary(z1, generator), self.binary(z2, generator), z1, z2)
            terms.update({f"{name}_{length}": value for name, value in parts.items()})
            per_length = _sum_in_order(parts)
            total = per_length if total is None else total + per_length
        if self.feature_loss and projections is not None:
            n = len(projections) // 2
            terms["features"] = self.feature_loss * nt_xent_features(projections[:n], projections[n:],
                                                                    self.feature_temperature, self.global_batch)
            total = total + terms["features"]
        return total, terms

    def checkpoint_state(self) -> dict:
        """What a checkpoint keeps of the objective: the memory banks (``criteria``), when there are."""
        if not any(c.memory for c in self.criteria.values()):
            return {}
        return {"criteria": {length: c.state_dict() for length, c in self.criteria.items()}}

    def load_checkpoint_state(self, state: dict) -> None:
        """Restores what :meth:`checkpoint_state` kept (nothing when ``state`` has no ``criteria``)."""
        for length, criterion_state in state.get("criteria", {}).items():
            self.criteria[str(int(length))].load_state_dict(criterion_state)

    def extra_repr(self) -> str:
        return f"feature_loss={self.feature_loss}, feature_temperature={self.feature_temperature}"
