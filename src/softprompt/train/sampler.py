"""Which training rows each micro-batch holds, for one task or a mixture of tasks.

Every row's task is drawn up front from a seeded generator (proportional to the
tasks' sizes, or flattened by a temperature T: p ~ n^(1/T), T1 = proportional, large T
-> uniform, Raffel et al. 2020), and each task's rows come from its own stream of
epoch-wise seeded shuffles. So a micro-batch is a pure function of (seed, index): a
resumed run replays exactly, and every DDP process agrees on it without talking.
With one task this is exactly the single-dataset order softprompt always used.
"""

from __future__ import annotations

import torch

from softprompt.data import Example
from softprompt.errors import ConfigError

SAMPLERS = ("proportional", "temperature")


def task_weights(sizes: list[int], sampler: str, temperature: float) -> torch.Tensor:
    """Sampling probability of each task: (K,)."""
    if sampler not in SAMPLERS:
        raise ConfigError(f"train.sampler: must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    power = 1.0 if sampler == "proportional" else 1.0 / temperature
    weights = torch.tensor(sizes, dtype=torch.float64) ** power
    return weights / weights.sum()


class TaskSampler:
    """Micro-batches of (task, example) pairs drawn from one or more training sets."""

    def __init__(
        self,
        train: dict[str, list[Example]],
        *,
        batch_size: int,
        seed: int,
        micro_batches: int,
        sampler: str = "proportional",
        temperature: float = 1.0,
    ) -> None:
        self.names = list(train)
        self.train = train
        self.batch_size, self.seed = batch_size, seed
        probs = task_weights([len(rows) for rows in train.values()], sampler, temperature)
        draw = torch.Generator().manual_seed(seed * 7_919 + 17)
        tasks = torch.multinomial(probs, micro_batches * batch_size, True, generator=draw)
        self.schedule = tasks.view(micro_batches, batch_size)  # (M, B) task index per row
        # how many rows of each task came before micro-batch i: (M, K)
        counts = torch.nn.functional.one_hot(self.schedule, len(self.names)).sum(1)  # (M, K)
        self.before = torch.cumsum(counts, 0) - counts
        self._orders: dict[tuple[int, int], torch.Tensor] = {}

    def micro_batch(self, index: int) -> list[tuple[str, Example]]:
        if index >= self.schedule.shape[0]:
            raise IndexError(f"micro-batch {index} is past the {self.schedule.shape[0]} planned")
        seen = self.before[index].clone()  # (K,)
        rows = []
        for task in self.schedule[index].tolist():
            rows.append((self.names[task], self._row(task, int(seen[task]))))
            seen[task] += 1
        return rows

    def _row(self, task: int, k: int) -> Example:
        """The k-th row of task `task`'s stream: epoch-wise shuffles, last partial batch
        of each epoch dropped (as a single-dataset loader with drop_last does)."""
        examples = self.train[self.names[task]]
        per_epoch = max(1, len(examples) // self.batch_size) * self.batch_size
        epoch, within = divmod(k, per_epoch)
        if (task, epoch) not in self._orders:
            seed = self.seed * 100_003 + epoch + 7_919 * task
            generator = torch.Generator().manual_seed(seed)
            self._orders = {(task, epoch): torch.randperm(len(examples), generator=generator)} | {
                key: order for key, order in self._orders.items() if key[0] != task
            }
        return examples[int(self._orders[task, epoch][within % len(examples)])]


def micro_batch(examples: list[Example], batch_size: int, seed: int, index: int) -> list[Example]:
    """Micro-batch `index` of one training set, as a one-task run draws it."""
    plan = TaskSampler(
        {"task": examples}, batch_size=batch_size, seed=seed, micro_batches=index + 1
    )
    return [example for _, example in plan.micro_batch(index)]
