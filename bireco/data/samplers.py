"""Batch samplers shared by both stages: seeded, rank-aware, resumable.

Each *global* batch (global_batch_size records, split over ranks) comes from one source dataset when
`homogeneous` (llm2vec / paper behaviour: no false negatives across tasks); otherwise batches mix datasets.
`bucket_by_length` sorts records by length inside windows of 64 global batches before cutting, so padding
shrinks while batch order stays random.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from bireco.core.choices import Choice


class Batching(Choice):
    """`data.batching`: homogeneous (one source dataset per global batch, the paper's) | mixed."""

    homogeneous = "homogeneous"
    mixed = "mixed"


class PairBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        dataset_names: Sequence[str],
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 42,
        homogeneous: bool = True,
        lengths: Sequence[int] | None = None,
        bucket_window: int = 64,
    ):
        if global_batch_size % world_size:
            raise ValueError(f"global batch {global_batch_size} not divisible by world size {world_size}")
        self.names = list(dataset_names)
        self.global_batch_size = global_batch_size
        self.per_rank = global_batch_size // world_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.homogeneous = homogeneous
        self.lengths = torch.as_tensor(lengths) if lengths is not None else None
        self.bucket_window = bucket_window
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already consumed), set on resume
        groups: dict[str, list[int]] = {}
        for i, n in enumerate(self.names):
            groups.setdefault(n, []).append(i)
        self.groups = {k: torch.tensor(v) for k, v in sorted(groups.items())}
        if len(self) == 0:
            raise ValueError(
                f"no complete global batch of {global_batch_size} records"
                + (" in any single source dataset" if homogeneous else "")
                + f" (dataset sizes: { {k: len(v) for k, v in self.groups.items()} })"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, consumed: int) -> None:
        """Skip the first `consumed` global batches of `epoch` (once): the rest of that epoch is then exactly
        what an uninterrupted run would have seen, because the order depends on seed + epoch only."""
        self.resume_at = (epoch, consumed) if 0 < consumed < len(self) else None

    def _blocks(self) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        pools = list(self.groups.values()) if self.homogeneous else [torch.arange(len(self.names))]
        blocks = []
        for idx in pools:
            idx = idx[torch.randperm(len(idx), generator=g)]
            if self.lengths is not None:
                w = self.bucket_window * self.global_batch_size
                idx = torch.cat([c[torch.argsort(self.lengths[c], stable=True)] for c in idx.split(w)])
            n = len(idx) // self.global_batch_size
            blocks += list(idx[: n * self.global_batch_size].view(n, self.global_batch_size))
        order = torch.randperm(len(blocks), generator=g)
        return [blocks[i] for i in order]

    def __iter__(self) -> Iterator[list[int]]:
        skip = 0
        if self.resume_at is not None and self.resume_at[0] == self.epoch:
            skip, self.resume_at = self.resume_at[1], None
        for block in self._blocks()[skip:]:
            yield block[self.rank * self.per_rank : (self.rank + 1) * self.per_rank].tolist()

    def __len__(self) -> int:
        return global_batches_per_epoch(self.names, self.global_batch_size, self.homogeneous)


def global_batches_per_epoch(
    dataset_names: Sequence[str], global_batch_size: int, homogeneous: bool = True
) -> int:
    """Complete global batches in one epoch (homogeneous: each source dataset's remainder is dropped)."""
    if not homogeneous:
        return len(dataset_names) // global_batch_size
    sizes: dict[str, int] = {}
    for n in dataset_names:
        sizes[n] = sizes.get(n, 0) + 1
    return sum(n // global_batch_size for n in sizes.values())
