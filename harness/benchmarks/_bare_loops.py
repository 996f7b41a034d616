"""The bare references of `bench methods`: each method's training step in plain PyTorch.

One small class per method (BARE_LOOPS), each doing the same math as the method's
`training_step` with a timm backbone, lightly's head and, where lightly has one, lightly's loss, on
the trainer's optimizer. tests/test_bench_methods.py checks that each loss equals its method's.
"""

from __future__ import annotations


class BareLoop:
    """What every method's loop shares: the timm backbone and lightly head, the trainer's optimizer
    and a cosine schedule, stepped on fixed preloaded batches. A subclass adds its method's state
    (`setup`) and loss.

    `BareLoop(method, ...)` builds that method's subclass from BARE_LOOPS, as `pathlib.Path(...)`
    builds a `PosixPath`."""

    reference = ""  # the row's `reference` column: what the harness is compared with

    @staticmethod
    def size_overrides(n_train: int) -> list[str]:
        """Config overrides that fit the method's own sizes to the benchmark's training set."""
        return []

    def __new__(cls, method: str, *args, **kwargs):
        if cls is BareLoop:
            if method not in BARE_LOOPS:
                raise ValueError(f"no bare loop for {method!r}")
            cls = BARE_LOOPS[method]
        return super().__new__(cls)

    def __init__(self, method: str, cfg, n_train: int, device):
        from collections import OrderedDict

        import timm
        import torch

        from harness.optimization import build_optimizer
        from methods.backbone import build_head  # lightly's heads, as every method builds them

        self.name, self.cfg, self.device = method, cfg, device
        backbone = timm.create_model(cfg.model.backbone, pretrained=False, num_classes=0)
        self.width = backbone.num_features
        head = build_head(self.width, cfg.model.embedding_dim, batch_norm=cfg.model.head_batch_norm)
        self.model = torch.nn.Sequential(OrderedDict(backbone=backbone, head=head)).to(device)
        self.setup(n_train)
        # build_optimizer reads only `name` and `parameters()`, which this loop has.
        self.optimizer = build_optimizer(self, cfg.train)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=1000)
        self.amp = device.type == "cuda" and cfg.train.amp
        self.channels_last = device.type == "cuda" and cfg.train.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.step_count = 0

    def setup(self, n_train: int) -> None:
        """The method's state beside the trained model (a key encoder, a bank, a cache)."""

    def parameters(self) -> list:
        """What the optimizer trains."""
        return list(self.model.parameters())

    def loss(self, views, index, step: int):
        raise NotImplementedError

    def load_from(self, method) -> None:
        """Copy a harness method's weights and state in (tests compare the two losses)."""
        self.model.load_state_dict(method.encoder.state_dict())

    def train(self) -> None:
        self.model.train()

    def batch(self, pool, batch_size: int):
        import torch

        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        index = torch.arange(batch_size)
        views = [pool[(index + v) % len(pool)] for v in range(2)]
        views = [v.to(self.device, memory_format=fmt) for v in views]
        return views, index.to(self.device)

    def step(self, views, index) -> float:
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss(views, index, self.step_count)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step_count += 1
        return float(loss.detach())


class BareSimCLR(BareLoop):
    reference = "bare loop, lightly NTXentLoss"

    def setup(self, n_train: int) -> None:
        from lightly.loss import NTXentLoss

        self.loss_fn = NTXentLoss(temperature=self.cfg.method_config.temperature)

    def loss(self, views, index, step: int):
        return self.loss_fn(self.model(views[0]), self.model(views[1]))


class BareMoCo(BareLoop):
    reference = "bare loop, lightly NTXentLoss(memory_bank_size)"

    @staticmethod
    def size_overrides(n_train: int) -> list[str]:
        return [f"moco.queue_size={min(4096, n_train)}"]

    def setup(self, n_train: int) -> None:
        import copy

        from lightly.loss import NTXentLoss

        mc = self.cfg.method_config
        self.key_model = copy.deepcopy(self.model).requires_grad_(False)
        self.loss_fn = NTXentLoss(
            temperature=mc.temperature,
            memory_bank_size=(mc.queue_size, self.cfg.model.embedding_dim),
        ).to(self.device)

    def loss(self, views, index, step: int):
        import torch
        import torch.nn.functional as F
        from lightly.models.utils import update_momentum

        mc = self.cfg.method_config
        query_views, key_views = views[0], views[1]
        if mc.symmetric:  # both directions in one call: one softmax row per query
            query_views = torch.cat([views[0], views[1]])
            key_views = torch.cat([views[1], views[0]])
        query = F.normalize(self.model(query_views), dim=1)
        with torch.no_grad():
            update_momentum(self.model, self.key_model, m=mc.momentum)
            key = F.normalize(self.key_model(key_views), dim=1)
        return self.loss_fn(query, key)  # lightly's bank enqueues the keys

    def load_from(self, method) -> None:
        self.model.load_state_dict(method.query_encoder.state_dict())
        self.key_model.load_state_dict(method.key_encoder.state_dict())
        self.loss_fn.memory_bank.bank.copy_(method.queue.keys)
        self.loss_fn.memory_bank.bank_ptr.fill_(int(method.queue.pointer))

    def train(self) -> None:
        self.model.train()
        self.key_model.train()


class BareMemoryBank(BareLoop):
    reference = "bare loop, cross-entropy over sampled slots"

    @staticmethod
    def size_overrides(n_train: int) -> list[str]:
        # The bank cannot sample more negatives than it has slots.
        return [f"membank.num_negatives={min(4096, n_train - 1)}"]

    def setup(self, n_train: int) -> None:
        import torch

        dim = self.cfg.model.embedding_dim
        self.slots = torch.nn.functional.normalize(torch.randn(n_train, dim), dim=1).to(self.device)

    def loss(self, views, index, step: int):
        import torch
        import torch.nn.functional as F

        from harness.seeding import method_generator

        mc = self.cfg.method_config
        query = F.normalize(self.model(views[0]), dim=1)
        # The method's draw: the run seed's "membank.negatives" generator at the step, so both
        # see the same slots.
        generator = method_generator(self.cfg.seed, "membank.negatives", step)
        sample = torch.randint(len(self.slots), (mc.num_negatives,), generator=generator)
        negatives = self.slots[sample.to(self.device)]
        positive = (query * self.slots[index]).sum(1, keepdim=True)
        logits = torch.cat([positive, query @ negatives.T], dim=1) / mc.temperature
        with torch.no_grad():
            mixed = mc.bank_momentum * self.slots[index] + (1 - mc.bank_momentum) * query
            self.slots[index] = F.normalize(mixed, dim=1)
        return F.cross_entropy(logits, torch.zeros_like(index))

    def load_from(self, method) -> None:
        super().load_from(method)
        self.slots.copy_(method.bank.slots)


class BareQK(BareLoop):
    reference = "bare loop, cross-entropy over all N keys"

    def setup(self, n_train: int) -> None:
        import torch

        from methods.backbone import build_head

        # The trained side's encoder, the frozen side's trainable head and its cached features.
        self.frozen_head = build_head(
            self.width, self.cfg.model.embedding_dim, batch_norm=self.cfg.model.head_batch_norm
        ).to(self.device)
        self.cache = torch.randn(n_train, self.width).to(self.device)

    def parameters(self) -> list:
        return [*self.model.parameters(), *self.frozen_head.parameters()]

    def loss(self, views, index, step: int):
        import torch.nn.functional as F

        query = F.normalize(self.model(views[0]), dim=1)
        keys = F.normalize(self.frozen_head(self.cache), dim=1)  # all N keys, full logits
        return F.cross_entropy(query @ keys.T / self.cfg.method_config.temperature, index)

    def load_from(self, method) -> None:
        trained, frozen = method.query, method.key  # phase 0 trains Q against K's cache
        self.model.load_state_dict(trained.state_dict())
        self.frozen_head.load_state_dict(frozen.head.state_dict())

    def train(self) -> None:
        self.model.train()
        self.frozen_head.train()


class BareSSCD(BareLoop):
    reference = "bare loop, lightly NTXentLoss + KoLeo"

    def setup(self, n_train: int) -> None:
        from lightly.loss import NTXentLoss

        self.loss_fn = NTXentLoss(temperature=self.cfg.method_config.temperature)

    def loss(self, views, index, step: int):
        import torch

        # One pass over both views, as the method's (BatchNorm sees the 2B images together).
        embedding = torch.nn.functional.normalize(self.model(torch.cat(views)), dim=1)
        first, second = embedding.chunk(2)
        # KoLeo: each embedding's distance to the nearest embedding of another image.
        ids = torch.cat([index, index])
        distance = torch.cdist(embedding.float(), embedding.float())
        other_images = ids[:, None] != ids[None, :]
        nearest = torch.where(other_images, distance, float("inf")).amin(dim=1)
        entropy = -nearest.square().clamp(min=1e-6).sqrt().log().mean()
        return self.loss_fn(first, second) + self.cfg.method_config.entropy_weight * entropy


class BareXBM(BareLoop):
    reference = "bare loop, cross-entropy per positive over batch + memory"

    @staticmethod
    def size_overrides(n_train: int) -> list[str]:
        # From the first step on, so the few measured steps pay for the memory.
        return ["xbm.warmup_steps=0"]

    def setup(self, n_train: int) -> None:
        import torch

        self.memory = torch.zeros(0, self.cfg.model.embedding_dim, device=self.device)
        self.memory_ids = torch.zeros(0, dtype=torch.long, device=self.device)

    def loss(self, views, index, step: int):
        import torch
        import torch.nn.functional as F

        mc = self.cfg.method_config
        embedding = F.normalize(self.model(torch.cat(views)), dim=1)
        ids = torch.cat([index, index])
        keys, key_ids = embedding, ids
        if step >= mc.warmup_steps:
            keys = torch.cat([embedding, self.memory])
            key_ids = torch.cat([ids, self.memory_ids])
        logits = embedding @ keys.T / mc.temperature
        same = ids[:, None] == key_ids[None, :]
        positives = same.clone()
        positives[:, : len(ids)].fill_diagonal_(False)  # an embedding is not its own positive
        # Each (row, positive) pair a cross-entropy over the positive and the row's negatives,
        # weighted so that each row's positives average to one term.
        row, column = positives.nonzero(as_tuple=True)
        negatives = torch.where(same[row], float("-inf"), logits[row])
        pair_logits = torch.cat([logits[row, column, None], negatives], dim=1)
        pair_loss = F.cross_entropy(pair_logits, torch.zeros_like(row), reduction="none")
        loss = (pair_loss / positives.sum(dim=1)[row]).sum() / len(ids)
        with torch.no_grad():  # the FIFO: the newest memory_size embeddings
            self.memory = torch.cat([embedding.detach(), self.memory])[: mc.memory_size]
            self.memory_ids = torch.cat([ids, self.memory_ids])[: mc.memory_size]
        return loss

    def load_from(self, method) -> None:
        super().load_from(method)
        written = method.memory.ids != -1
        self.memory = method.memory.embeddings[written].clone()
        self.memory_ids = method.memory.ids[written].clone()


BARE_LOOPS: dict[str, type[BareLoop]] = {
    "simclr": BareSimCLR,
    "moco": BareMoCo,
    "membank": BareMemoryBank,
    "qk": BareQK,
    "sscd": BareSSCD,
    "xbm": BareXBM,
}
