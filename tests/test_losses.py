"""bank_info_nce against the textbook full-matrix cross-entropy, closed forms and memory bounds."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_methods_support import one_thread  # noqa: F401  (autouse fixture)

from methods.losses import bank_info_nce

B, D, N, C = 6, 8, 50, 12


def unit(*shape, seed, dtype=torch.float64):
    return F.normalize(
        torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype), dim=-1
    )


def reference(query, keys, temperature, positive_index=None, positive_key=None):
    """Literal definition: -log softmax of the positive's logit."""
    logits = query @ keys.T / temperature
    if positive_key is not None:
        logits = torch.cat([(query * positive_key).sum(1, keepdim=True) / temperature, logits], 1)
        positive_index = torch.zeros(len(query), dtype=torch.long)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_prob[torch.arange(len(query)), positive_index].mean()


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


@pytest.mark.parametrize("unit_keys", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, N, 4096])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_positive_in_bank_matches_reference_with_gradients(chunk_size, temperature, unit_keys):
    query = unit(B, D, seed=0).requires_grad_()
    bank = unit(N, D, seed=1).requires_grad_()
    positive = torch.tensor([0, 49, 7, 7, 23, 8])  # a repeated positive and both ends of the bank
    got = bank_info_nce(
        query,
        bank,
        temperature,
        positive_index=positive,
        chunk_size=chunk_size,
        unit_keys=unit_keys,
    )
    want = reference(query, bank, temperature, positive_index=positive)
    torch.testing.assert_close(got, want)
    for a, b in zip(grads(got, [query, bank]), grads(want, [query, bank]), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("unit_keys", [False, True])
def test_query_only_gradient_when_the_bank_is_fixed(unit_keys):
    query = unit(B, D, seed=0).requires_grad_()
    bank = unit(N, D, seed=1)
    positive = torch.arange(B) * 3
    got = bank_info_nce(
        query, bank, 0.1, positive_index=positive, chunk_size=9, unit_keys=unit_keys
    )
    want = reference(query, bank, 0.1, positive_index=positive)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grads(got, [query])[0], grads(want, [query])[0])


@pytest.mark.parametrize("unit_keys", [False, True])
@pytest.mark.parametrize("bank_grad", [False, True])
def test_separate_positive_key_joins_the_softmax(bank_grad, unit_keys):
    query = unit(B, D, seed=0).requires_grad_()
    key = unit(B, D, seed=2).requires_grad_()
    bank = unit(N, D, seed=1).requires_grad_(bank_grad)
    tensors = [query, key] + ([bank] if bank_grad else [])
    got = bank_info_nce(query, bank, 0.2, positive_key=key, chunk_size=11, unit_keys=unit_keys)
    want = reference(query, bank, 0.2, positive_key=key)
    torch.testing.assert_close(got, want)
    for a, b in zip(grads(got, tensors), grads(want, tensors), strict=True):
        torch.testing.assert_close(a, b)


def _head():
    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Linear(C, 16), torch.nn.ReLU(), torch.nn.Linear(16, D)
    ).double()


@pytest.mark.parametrize("head_memory_mb", [0.0, 256.0])  # chunked head / whole-bank keys
@pytest.mark.parametrize("positive_mode", ["index", "key"])
def test_trainable_head_over_cached_features(positive_mode, head_memory_mb):
    head = _head()
    features = torch.randn(N, C, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    query = unit(B, D, seed=0).requires_grad_()
    params = [query, *head.parameters()]

    def positive():  # a fresh graph for each of the two losses
        if positive_mode == "key":
            return {"positive_key": F.normalize(head(features[:B] + 1), dim=1)}
        return {"positive_index": torch.arange(B) * 5}

    got = bank_info_nce(
        query, features, 0.1, head=head, chunk_size=8, head_memory_mb=head_memory_mb, **positive()
    )
    want = reference(query, F.normalize(head(features), dim=1), 0.1, **positive())
    torch.testing.assert_close(got, want)
    for a, b in zip(grads(got, params), grads(want, params), strict=True):
        torch.testing.assert_close(a, b)


def test_frozen_head_parameters_get_no_gradient():
    head = _head()
    head[0].weight.requires_grad_(False)
    features = torch.randn(N, C, dtype=torch.float64)
    query = unit(B, D, seed=0).requires_grad_()
    bank_info_nce(query, features, 0.1, positive_index=torch.arange(B), head=head).backward()
    assert head[0].weight.grad is None
    assert head[0].bias.grad is not None and head[2].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("chunk_size", [3, 1000])
def test_uniform_logits_give_log_of_the_number_of_candidates(chunk_size):
    query = unit(B, D, seed=0)
    same = unit(1, D, seed=1).expand(N, D).contiguous()  # every key identical: all logits equal
    got = bank_info_nce(
        query, same, 0.1, positive_index=torch.zeros(B, dtype=torch.long), chunk_size=chunk_size
    )
    torch.testing.assert_close(got, torch.tensor(math.log(N), dtype=torch.float64))
    got = bank_info_nce(query, same, 0.1, positive_key=same[:B], chunk_size=chunk_size)
    torch.testing.assert_close(got, torch.tensor(math.log(N + 1), dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_bank_is_close_to_fp32(dtype):
    query = unit(B, D, seed=0, dtype=torch.float32)
    bank = unit(N, D, seed=1, dtype=torch.float32)
    positive = torch.arange(B)
    full = bank_info_nce(query, bank, 0.1, positive_index=positive)
    low = bank_info_nce(query, bank.to(dtype), 0.1, positive_index=positive)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, full, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("unit_keys", [False, True])
def test_large_logits_do_not_overflow_or_underflow(unit_keys):
    # At T = 1e-3 a fixed shift of |q| / T would underflow every exp: the running max must be used.
    query = unit(B, D, seed=0)
    bank = unit(N, D, seed=1)
    positive = torch.arange(B)
    got = bank_info_nce(
        query, bank, 1e-3, positive_index=positive, chunk_size=7, unit_keys=unit_keys
    )
    torch.testing.assert_close(got, reference(query, bank, 1e-3, positive_index=positive))


def _saved_bytes(n_bank: int, bank_grad: bool) -> int:
    """Bytes autograd keeps for backward, not counting the bank itself."""
    bank = unit(n_bank, D, seed=1, dtype=torch.float32).requires_grad_(bank_grad)
    query = unit(64, D, seed=0, dtype=torch.float32).requires_grad_()
    saved = []

    def pack(tensor):
        if tensor.data_ptr() != bank.data_ptr():
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        bank_info_nce(query, bank, 0.1, positive_index=torch.arange(64), chunk_size=256)
    return sum(saved)


@pytest.mark.parametrize("bank_grad", [False, True])
def test_memory_kept_for_backward_does_not_grow_with_the_bank(bank_grad):
    assert _saved_bytes(1_000, bank_grad) == _saved_bytes(8_000, bank_grad)
    assert _saved_bytes(8_000, bank_grad) < 64 * 256 * 4  # less than one chunk of logits


def test_bad_arguments_raise():
    query, bank = unit(B, D, seed=0), unit(N, D, seed=1)
    with pytest.raises(ValueError, match="temperature"):
        bank_info_nce(query, bank, 0.0, positive_index=torch.arange(B))
    with pytest.raises(ValueError, match="exactly one"):
        bank_info_nce(query, bank, 0.1)
    with pytest.raises(ValueError, match="chunk_size"):
        bank_info_nce(query, bank, 0.1, positive_index=torch.arange(B), chunk_size=0)


@pytest.mark.parametrize(
    "dtype, temperature",
    [
        (torch.float32, 0.025),  # bound |q| / T = 40: the last one without any shift
        (torch.float32, 0.024),  # just past it: the running max
        (torch.float16, 0.1),  # float16's narrow range: the fixed shift
        (torch.bfloat16, 0.1),  # float32's range: no shift
    ],
)
def test_each_log_sum_exp_path_matches_the_reference(dtype, temperature):
    query = unit(B, D, seed=0).to(dtype).requires_grad_()
    bank = unit(N, D, seed=1).to(dtype)
    positive = torch.arange(B)
    got = bank_info_nce(
        query, bank, temperature, positive_index=positive, chunk_size=7, unit_keys=True
    )
    (got_grad,) = grads(got, [query])
    exact = query.detach().double().requires_grad_()
    want = reference(exact, bank.double(), temperature, positive_index=positive)
    (want_grad,) = grads(want, [exact])
    tolerance = {torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(got.double(), want, atol=tolerance * 10, rtol=tolerance)
    torch.testing.assert_close(got_grad.double(), want_grad, atol=tolerance, rtol=tolerance * 10)
