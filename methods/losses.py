"""Contrastive losses as pure functions over tensors.

`multi_positive_info_nce` and `nearest_neighbour_entropy` are SSCD's in-batch InfoNCE (several
positives per row: mixed images, memory copies) and its KoLeo regularizer (methods/sscd.py,
methods/xbm.py); the rest of this module is the bank loss.

`bank_info_nce` is the hot path of QK iteration (and serves MoCo and the memory bank): the InfoNCE
cross-entropy of B queries over N bank entries, N up to ~1M. A naive `q @ bank.T` materialises a
B x N logits matrix (512 MB at B = 128, N = 1M) and its softmax gradient; here the bank is walked in
chunks with a running log-sum-exp (the online softmax of flash attention), so memory beyond the bank
is O(B x chunk_size) whatever N is.

When only the query needs a gradient (the frozen side's keys are fixed), that gradient
    dL/dq_b = (sum_n softmax_bn k_n - k_pos(b)) / (T B)
is accumulated in the same pass as the log-sum-exp (rescaled whenever the running max moves), so a
training step costs exactly the two matmuls of the floor (logits and softmax @ keys) and backward is
a scale. When the bank side needs a gradient too (the bank itself, or a trainable head applied to
cached features chunk by chunk), backward recomputes each chunk's keys and logits from the saved
log-sum-exp, so nothing of size B x N or N x hidden is ever kept.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Rows per chunk: B x 4096 fp32 logits = 2 MB at B = 128. Measured at B = d = 128, N = 1M on one
# core: 1024 / 4096 / 16384 rows gave 68 / 77 / 80 % of the square-matmul rate; 4096 keeps the
# per-chunk temporaries small.
DEFAULT_CHUNK_SIZE = 4096
# Ours (a speed/memory trade-off; the loss and gradients are the same): when the trainable head's
# activations over the whole bank fit in this many MB, the keys are computed once with their graph
# and the head runs forward once and backward once, as in a plain loop. Beyond it the head runs
# chunk by chunk in forward and again in backward, so memory stays O(B x chunk) whatever N is.
# Measured for QK's protocol step (N = 5k, C = 512, d = 128, 2 CPU cores): the chunked head made
# the loss ~3x slower than a plain loop (docs/performance.md).
DEFAULT_HEAD_MEMORY_MB = 256.0
_SAFE_EXPONENT = 80.0  # exp(-80) is still a normal float32
# exp(+-40) and their sum over 1e12 keys stay normal float32 values (max ~3.4e38, min ~1.2e-38).
_UNSHIFTED_BOUND = 40.0
_WIDE_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


@dataclass(frozen=True)
class _Spec:
    temperature: float
    chunk_size: int
    head: Callable[[torch.Tensor], torch.Tensor] | None
    positive_index: (
        torch.Tensor | None
    )  # (B,) rows of the bank, or None when a separate logit is given
    unit_keys: bool  # every key has norm <= 1 (normalized bank, or keys from the head)
    grad_in_forward: bool  # the bank side is fixed: accumulate the query's gradient in forward
    query_needs_grad: bool


def _keys(spec: _Spec, chunk: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if spec.head is None:
        return chunk.to(dtype)
    return F.normalize(spec.head(chunk.to(dtype)), dim=1)


def _positives_by_chunk(spec: _Spec, n_bank: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """{chunk start: (rows whose positive lies in that chunk, its column inside the chunk)}."""
    if spec.positive_index is None:
        return {}
    chunk_start = spec.positive_index.div(spec.chunk_size, rounding_mode="floor") * spec.chunk_size
    hits = {}
    for start in torch.unique(chunk_start).tolist():
        rows = (chunk_start == start).nonzero().squeeze(1)
        hits[int(start)] = (rows, spec.positive_index[rows] - start)
    return hits


class _BankInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, bank, extra_logit, spec: _Spec, *head_params):
        batch, n_bank = query.shape[0], bank.shape[0]
        scaled = query / spec.temperature
        stat = torch.promote_types(query.dtype, torch.float32)  # fp32 statistics under bf16
        # Running max and sum of exp per row; a separate positive logit seeds them.
        if extra_logit is not None:
            run_max = extra_logit.detach().to(stat).clone()
            run_sum = torch.ones(batch, dtype=stat, device=query.device)
        else:
            run_max = torch.full((batch,), -torch.inf, dtype=stat, device=query.device)
            run_sum = torch.zeros(batch, dtype=stat, device=query.device)
        positive = torch.zeros(batch, dtype=stat, device=query.device)
        acc = positive_keys = None
        if spec.grad_in_forward and spec.query_needs_grad:
            acc = torch.zeros(batch, query.shape[1], dtype=query.dtype, device=query.device)
            positive_keys = torch.zeros_like(acc)
        # Unit keys bound every logit by |q_b| / T: a fixed shift then replaces the running max
        # (no max pass, no rescaling) as long as exp(-2 |q_b| / T) cannot underflow. When the
        # bound is small (|q| = 1 and T >= 0.025) and the chunk's dtype has float32's range, no
        # shift is needed at all: exp(logit) stays far inside the range, and the logits are a
        # plain matmul instead of an addmm that first copies the broadcast shift (~15% of the
        # step at N = 1M on 2 CPU threads).
        shift = None
        unshifted = False
        if spec.unit_keys:
            bound = query.detach().norm(dim=1).to(stat) / spec.temperature
            largest = float(bound.max())
            if largest <= _UNSHIFTED_BOUND and query.dtype in _WIDE_DTYPES:
                shift = torch.zeros_like(bound)
                unshifted = True
            elif largest * 2 < _SAFE_EXPONENT:
                shift = bound
            if shift is not None:
                if extra_logit is not None:
                    run_sum = torch.exp(extra_logit.detach().to(stat) - shift)
                else:
                    run_sum = torch.zeros(batch, dtype=stat, device=query.device)
                run_max = shift
        hits = _positives_by_chunk(spec, n_bank)
        for start in range(0, n_bank, spec.chunk_size):
            end = min(start + spec.chunk_size, n_bank)
            keys = _keys(spec, bank[start:end], query.dtype)
            hit = hits.get(start)
            if shift is not None:
                if unshifted:
                    probs = torch.mm(scaled, keys.T)
                else:
                    probs = torch.addmm(-shift.to(query.dtype)[:, None], scaled, keys.T)
                if hit is not None:
                    positive[hit[0]] = probs[hit[0], hit[1]].to(stat) + shift[hit[0]]
                    if positive_keys is not None:
                        positive_keys[hit[0]] = keys[hit[1]]
                probs.exp_()
                run_sum += probs.sum(dim=1) if probs.dtype == stat else probs.sum(dim=1, dtype=stat)
                if acc is not None:
                    acc.addmm_(probs, keys)
                continue
            logits = scaled @ keys.T
            if hit is not None:
                positive[hit[0]] = logits[hit[0], hit[1]].to(stat)
                if positive_keys is not None:
                    positive_keys[hit[0]] = keys[hit[1]]
            new_max = torch.maximum(run_max, logits.amax(dim=1).to(stat))
            rescale = torch.exp(run_max - new_max)
            probs = logits.sub_(new_max.to(logits.dtype)[:, None]).exp_()  # in place
            run_sum = run_sum * rescale + probs.sum(dim=1, dtype=stat)
            if acc is not None:
                acc.mul_(rescale.to(acc.dtype)[:, None]).addmm_(probs, keys)
            run_max = new_max
        lse = run_max + torch.log(run_sum)
        if extra_logit is not None:
            positive = extra_logit.to(stat)
        loss = (lse - positive).mean()
        ctx.spec = spec
        if spec.grad_in_forward:
            grad_query = None
            if acc is not None:
                grad_query = (acc / run_sum.to(acc.dtype)[:, None] - positive_keys) / (
                    spec.temperature * batch
                )
            ctx.save_for_backward(grad_query, lse, extra_logit)
        else:
            ctx.save_for_backward(query, bank, lse, extra_logit, *head_params)
        return loss.to(query.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        spec: _Spec = ctx.spec
        if spec.grad_in_forward:
            grad_query, lse, extra_logit = ctx.saved_tensors
            grad_extra = None
            if extra_logit is not None and ctx.needs_input_grad[2]:
                grad_extra = (
                    (torch.exp(extra_logit.to(lse.dtype) - lse) - 1).to(extra_logit.dtype)
                    / lse.shape[0]
                    * grad_loss
                )
            grad_query = None if grad_query is None else grad_query * grad_loss
            return grad_query, None, grad_extra, None
        query, bank, lse, extra_logit, *head_params = ctx.saved_tensors
        batch, n_bank = query.shape[0], bank.shape[0]
        scaled = query / spec.temperature
        scale = (grad_loss / batch).to(query.dtype)
        grad_query = torch.zeros_like(query)
        grad_bank = torch.zeros_like(bank) if ctx.needs_input_grad[1] else None
        grad_params = [torch.zeros_like(p) for p in head_params]
        lse_q = lse.to(query.dtype)[:, None]
        hits = _positives_by_chunk(spec, n_bank)
        for start in range(0, n_bank, spec.chunk_size):
            end = min(start + spec.chunk_size, n_bank)
            with torch.enable_grad():
                keys = _keys(spec, bank[start:end], query.dtype)
            with torch.no_grad():
                probs = torch.addmm(-lse_q, scaled, keys.T).exp_()
                hit = hits.get(start)
                if hit is not None:
                    probs[hit[0], hit[1]] -= 1
                probs.mul_(scale)  # now dL/dlogits for this chunk
                grad_query.addmm_(probs, keys, alpha=1 / spec.temperature)
                grad_keys = probs.T @ scaled
            if head_params:
                for total, part in zip(
                    grad_params, torch.autograd.grad(keys, head_params, grad_keys), strict=True
                ):
                    total += part
            elif grad_bank is not None:
                grad_bank[start:end] = grad_keys.to(bank.dtype)
        grad_extra = None
        if extra_logit is not None:
            grad_extra = (
                (torch.exp(extra_logit.to(lse.dtype) - lse) - 1).to(extra_logit.dtype)
                / batch
                * grad_loss
            )
        return (grad_query, grad_bank, grad_extra, None, *grad_params)


def bank_info_nce(
    query: torch.Tensor,
    bank: torch.Tensor,
    temperature: float,
    *,
    positive_index: torch.Tensor | None = None,
    positive_key: torch.Tensor | None = None,
    head: torch.nn.Module | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    unit_keys: bool = False,
    head_memory_mb: float = DEFAULT_HEAD_MEMORY_MB,
) -> torch.Tensor:
    """Mean cross-entropy of each query over a large bank, computed chunk by chunk.

    query: (B, d) L2-normalized. bank: (N, d) L2-normalized keys, or (N, C) cached features when
    `head` is given (the keys are then `normalize(head(bank[chunk]))`, computed chunk by chunk, and
    the head's parameters receive their gradient). The positive of query b is either the bank row
    `positive_index[b]` (QK, memory bank) or a separate key `positive_key[b]` that joins the softmax
    as one extra logit (MoCo's queue, lightly's convention). The bank may be fp16/bf16; chunks are
    cast to the query's dtype. Gradients flow to `query`, to `positive_key`, to `bank` if it
    requires grad, and to the head's trainable parameters. `unit_keys=True` promises that every
    bank row has norm <= 1 (always true with a head, whose keys are normalized here), which lets
    the log-sum-exp use a fixed shift instead of a running max (one pass less per chunk).
    `head_memory_mb`: the head's activations over the whole bank up to this size are kept (one
    head pass each way); larger banks recompute the head per chunk in backward (0: always chunk).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if (positive_index is None) == (positive_key is None):
        raise ValueError("give exactly one of positive_index and positive_key")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if head is not None and _head_activation_mb(bank, head, query.dtype) <= head_memory_mb:
        with torch.autocast(device_type=query.device.type, enabled=False):
            keys = F.normalize(head(bank.to(query.dtype)), dim=1)
        return bank_info_nce(
            query,
            keys,
            temperature,
            positive_index=positive_index,
            positive_key=positive_key,
            chunk_size=chunk_size,
            unit_keys=True,
        )
    extra_logit = None
    if positive_key is not None:
        extra_logit = (query * positive_key.to(query.dtype)).sum(dim=1) / temperature
    else:
        positive_index = positive_index.to(device=query.device, dtype=torch.long)
    head_params = tuple(p for p in head.parameters() if p.requires_grad) if head is not None else ()
    bank_needs_grad = bank.requires_grad or bool(head_params)
    spec = _Spec(
        temperature=float(temperature),
        chunk_size=int(chunk_size),
        head=head,
        positive_index=positive_index,
        unit_keys=unit_keys or head is not None,
        grad_in_forward=not bank_needs_grad,
        query_needs_grad=query.requires_grad and torch.is_grad_enabled(),
    )
    # The chunks are computed in the query's dtype; autocast must not re-cast them behind our back
    # (the backward pass runs outside autocast).
    with torch.autocast(device_type=query.device.type, enabled=False):
        return _BankInfoNCE.apply(query, bank, extra_logit, spec, *head_params)


def _head_activation_mb(bank: torch.Tensor, head: torch.nn.Module, dtype: torch.dtype) -> float:
    """What autograd keeps of `head` over all of `bank`: each linear layer's output and that of
    the activation after it, N rows each."""
    widths = sum(m.out_features for m in head.modules() if isinstance(m, torch.nn.Linear))
    bytes_per_value = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    return bank.shape[0] * 2 * widths * bytes_per_value / 2**20


def naive_info_nce(
    query: torch.Tensor,
    keys: torch.Tensor,
    temperature: float,
    positive_index: torch.Tensor,
) -> torch.Tensor:
    """The textbook form (full logits matrix + cross-entropy): the reference the benchmark beats."""
    return F.cross_entropy(query @ keys.T / temperature, positive_index)


def multi_positive_info_nce(
    logits: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """SSCD's InfoNCE over a similarity matrix whose rows may have several positives.

    logits (R, C) are similarities over the temperature; `positives` and `negatives` (R, C) are
    disjoint boolean masks (a row's own column is in neither). Each positive p of row i is its own
    softmax over itself and the row's negatives, -log(e^l_ip / (e^l_ip + sum_n e^l_in)); a row's
    terms are averaged over its positives, and the rows are averaged, a row without a positive
    counting 0 (so the mean stays over all R rows, as the DDP equivalence needs). With one
    positive per row this is NT-Xent."""
    # A finite fill instead of -inf: a row without negatives then has a finite log-sum-exp whose
    # backward is not NaN; exp(fill - anything) is exactly 0 in every sum.
    fill = torch.finfo(logits.dtype).min
    negative_lse = torch.where(negatives, logits, fill).logsumexp(dim=1, keepdim=True)
    terms = torch.where(positives, torch.logaddexp(logits, negative_lse) - logits, 0.0)
    return (terms.sum(dim=1) / positives.sum(dim=1).clamp(min=1)).mean()


def nearest_neighbour_entropy(similarity: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """SSCD's differential-entropy (KoLeo) regularizer: -mean_i log(min_j ||z_i - z_j||) over the
    `candidates` (R, C) of each row (SSCD: the row's non-matching embeddings), from the cosine
    `similarity` (R, C) of unit embeddings: ||z_i - z_j|| = sqrt(2 - 2 s_ij). As in SSCD the
    squared distance is clamped at 1e-6 (no gradient below it); a row without candidates counts
    the largest distance on the sphere, 2."""
    nearest = torch.where(candidates, similarity, -1.0).amax(dim=1)
    distance = (2 - 2 * nearest).clamp(min=1e-6).sqrt()
    return -distance.log().mean()
