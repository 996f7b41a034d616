"""The QK step's loss over N negatives, against the machine's measured matmul rate.

One training step of the trained side only (forward + backward of `methods.losses.bank_info_nce`,
gradient to the B x d query embeddings), B = 128, d = 128, N = 10k / 100k / 1M negatives:

- `keys`: the frozen side's keys are cached (N x d). Floor: 2·B·d·N FLOPs for the logits plus
  2·B·d·N for the backward matmul (softmax @ keys), i.e. 4·B·d·N at the measured matmul rate.
- `head`: the frozen side's trainable head (C -> C -> d MLP, C = 512 as resnet18's features) runs
  over the N cached features inside the loss. Floor: the head's forward (2·N·(C·C + C·d)), the
  logits, the query's and the keys' gradients (3 x 2·B·d·N) and the head's backward (2·N·C·C for
  the first layer's weights, 4·N·C·d for the second layer's weights and input).

With `bench --config/--set` (a `Protocol`), B is the protocol's batch (per device), d its
embedding and C its backbone's feature width (2048 for resnet50), so the rows are the loss of that
protocol's QK step at each N (what `sweep --dry-run --calibration` extrapolates to the run's N).

Each row gives seconds per step, achieved GFLOP/s of that floor, % of the measured matmul peak
(a large square matmul in the same dtype, best of 3), the peak memory beyond the inputs (CPU: the
rise of the process's peak RSS, reset per case through /proc/self/clear_refs; GPU: the CUDA
allocator's peak), and the naive `q @ bank.T` + cross-entropy baseline (full logits / full head
output materialised) timed the same way. `bf16` stores the bank and computes in bfloat16 (on CPUs
with AMX/AVX512-bf16 and on GPUs); the running log-sum-exp stays in fp32.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from harness.benchmarks import Protocol
from harness.benchmarks._fork_server import reset_peak, status_kb

DESCRIPTION = "QK loss over N negatives (B=128, d=128, N up to 1M): % of matmul peak, memory, naive"
BATCH, DIM, FEATURES = 128, 128, 512
FULL_SIZES = (10_000, 100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
NAIVE_HEAD_MAX = 100_000  # the naive head at 1M needs ~10 GB; skipped beyond this
TARGET_PERCENT = 70.0


def _matmul_gflops(dtype, device, repeat: int = 2) -> float:
    """The rate of a large square matmul in `dtype`, best of `repeat`."""
    import torch

    from harness.benchmarks import timed

    size = 4096 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    _, seconds = timed(lambda: a @ b, repeat=repeat)
    return 2 * size**3 / seconds / 1e9


class _PeakMemory:
    """Peak memory (MB) allocated inside the block, beyond what was there at its start."""

    def __init__(self, device):
        self.device = device
        self.mb = None

    def __enter__(self):
        import torch

        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = status_kb("VmRSS")
            if not reset_peak():
                self.start = None
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated() - self.start) / 2**20
        elif self.start is not None:
            self.mb = max(0, (status_kb("VmHWM") or 0) - self.start) / 1024
        return False


def _step(loss_fn, query):
    loss = loss_fn(query)
    loss.backward()
    query.grad = None
    return float(loss.detach())


def _measure(loss_fn, query, device, repeat):
    from harness.benchmarks import timed

    _step(loss_fn, query)  # warm-up (allocator, kernels)
    with _PeakMemory(device) as memory:
        loss, seconds = timed(lambda: _step(loss_fn, query), repeat=repeat)
    return loss, seconds, memory.mb


@dataclass(frozen=True)
class Shape:
    batch: int  # B: queries per step
    dim: int  # d: embedding
    features: int  # C: the backbone's feature width, the head's input
    backbone: str | None = None  # the protocol's, when the shape is one's


def shape_for(protocol: Protocol | None) -> Shape:
    if protocol is None:
        return Shape(BATCH, DIM, FEATURES)
    import timm

    cfg = protocol.resolve("qk")
    # The feature width alone is wanted: a random init on the meta device costs no memory.
    import torch

    with torch.device("meta"):
        features = timm.create_model(cfg.model.backbone, num_classes=0).num_features
    return Shape(cfg.train.batch_size, cfg.model.embedding_dim, features, cfg.model.backbone)


def _head_flops(n: int, shape: Shape) -> float:
    c, d = shape.features, shape.dim
    head_forward = 2 * n * (c * c + c * d)
    logits = 2 * shape.batch * d * n
    head_backward = 2 * n * c * c + 4 * n * c * d
    return head_forward + 3 * logits + head_backward


def run(quick: bool, protocol: Protocol | None = None) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from harness.pipeline import pick_device
    from methods.backbone import build_head
    from methods.losses import bank_info_nce, naive_info_nce

    device = pick_device("auto")  # a run's default: the GPU when there is one
    shape = shape_for(protocol)
    batch, dim, features = shape.batch, shape.dim, shape.features
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    # The peak is re-measured before every case and the best over the whole run is used: on a
    # shared machine a single early measurement can catch a busy moment and flatter the ratios.
    peaks = {name: _matmul_gflops(dtype, device, repeat=3) for name, dtype in dtypes.items()}
    sizes = QUICK_SIZES if quick else FULL_SIZES
    repeat = 2 if quick else 3
    temperature = 0.1
    generator = torch.Generator().manual_seed(0)
    rows = []
    cases = [(case, dtype, n) for case in ("keys", "head") for dtype in dtypes for n in sizes]
    if quick:  # the head over 100k features takes seconds per step: one size is enough for CI
        cases = [c for c in cases if c[0] == "keys" or c[2] == sizes[0]]
    for case, dtype_name, n in tqdm(cases, desc="bench negatives", leave=False):
        dtype = dtypes[dtype_name]
        peaks[dtype_name] = max(peaks[dtype_name], _matmul_gflops(dtype, device))
        positive = torch.randint(n, (batch,), generator=generator).to(device)
        query = F.normalize(torch.randn(batch, dim, generator=generator), dim=1)
        query = query.to(device=device, dtype=dtype).requires_grad_()
        if case == "keys":
            bank = F.normalize(torch.randn(n, dim, generator=generator), dim=1).to(device, dtype)
            flops = 4 * batch * dim * n

            def ours(q, bank=bank, positive=positive):
                return bank_info_nce(q, bank, temperature, positive_index=positive)

            def naive(q, bank=bank, positive=positive):
                return naive_info_nce(q, bank, temperature, positive)

            run_naive = True
        else:
            bank = torch.randn(n, features, generator=generator).to(device, dtype)
            head = build_head(features, dim).to(device=device, dtype=dtype)
            flops = _head_flops(n, shape)

            def ours(q, bank=bank, head=head, positive=positive):
                return bank_info_nce(q, bank, temperature, positive_index=positive, head=head)

            def naive(q, bank=bank, head=head, positive=positive):
                keys = F.normalize(head(bank), dim=1)
                return naive_info_nce(q, keys, temperature, positive)

            run_naive = n <= NAIVE_HEAD_MAX
        slow = case == "head" and n >= 1_000_000  # tens of seconds per step on a CPU
        loss, seconds, memory = _measure(ours, query, device, 1 if slow else repeat)
        naive_loss = naive_seconds = naive_memory = None
        if run_naive:
            naive_loss, naive_seconds, naive_memory = _measure(naive, query, device, 1)
        gflops = flops / seconds / 1e9
        peaks[dtype_name] = max(peaks[dtype_name], _matmul_gflops(dtype, device))
        tolerance = 1e-3 if dtype == torch.float32 else 3e-2  # bf16 logits: ~3 significant digits
        rows.append(
            {
                "benchmark": "negatives",
                "case": case,
                "dtype": dtype_name,
                "N": n,
                "batch": batch,
                "dim": dim,
                "features": features,
                "backbone": shape.backbone,
                "seconds_per_step": seconds,
                "gflops": gflops,
                "percent_of_peak": None,  # filled in below, against the run's best peak
                "matmul_peak_gflops": None,
                "peak_extra_mb": memory,
                "naive_seconds": naive_seconds,
                "naive_gflops": flops / naive_seconds / 1e9 if naive_seconds else None,
                "naive_percent_of_peak": None,
                "naive_peak_extra_mb": naive_memory,
                "loss_matches_naive": (
                    abs(loss - naive_loss) <= tolerance * max(1.0, abs(naive_loss))
                    if naive_loss is not None
                    else None
                ),
                "target": f">= {TARGET_PERCENT:g}% of peak (keys, fp32, N=1M)",
            }
        )
        del bank, query
        gc.collect()
    for row in rows:
        peak = peaks[row["dtype"]]
        row["matmul_peak_gflops"] = peak
        row["percent_of_peak"] = 100 * row["gflops"] / peak
        if row["naive_gflops"] is not None:
            row["naive_percent_of_peak"] = 100 * row["naive_gflops"] / peak
        row["threads"] = torch.get_num_threads()
    return rows
