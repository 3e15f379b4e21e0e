"""The work benchmarks/peft_methods.py credits for the speed-up against PEFT, counted: each
method's reparameterization runs once per step (not once per row), the backbone runs the
prompt once (at batch 1) and the rows once, and a prefix on a decoder without BOS needs
no prompt pass at all. A regression to per-row work fails here, not only in a benchmark."""

from __future__ import annotations

import pytest
import torch

from softprompt.model import MultiTaskModel

BATCH = 6


class Calls:
    """Records the input shape of every forward call of a module (() without input)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.shapes: list[tuple[int, ...]] = []
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.shapes.append(tuple(args[0].shape) if args else ())


def _core_batches(backbone, step) -> list[int]:
    """Batch sizes of every call of the transformer stack during `step()`."""
    seen: list[int] = []

    def hook(module, args, kwargs, output):
        embeds = kwargs.get("inputs_embeds")
        seen.append(embeds.shape[0] if embeds is not None else -1)

    handle = backbone.core().register_forward_hook(hook, with_kwargs=True)
    try:
        step()
    finally:
        handle.remove()
    return seen


def _step(model, rows):
    return lambda: model(model.collate(rows)).loss.backward()


@pytest.mark.parametrize(
    "method,options,part",
    [
        ("p-tuning", {"n_tokens": 3, "encoder": "mlp", "hidden": 8}, "encoder"),
        ("p-tuning", {"n_tokens": 3, "encoder": "lstm", "hidden": 8}, "encoder"),
        ("prefix-tuning", {"n_tokens": 3}, "mlp"),
    ],
)
def test_the_reparameterization_runs_once_per_step(
    backbones, make_model, toy_dataset, method, options, part
):
    model = make_model(backbones["tiny_llama"], method, **options)
    calls = Calls(getattr(model.method, part))
    _step(model, toy_dataset.train[:BATCH])()
    d = model.backbone.spec.hidden_size
    one_prompt = (3, d) if method == "prefix-tuning" else (1, 3, d)
    assert calls.shapes == [one_prompt]  # one call on the n embeddings, for all BATCH rows


@pytest.mark.parametrize("method", ["soft-prompt", "p-tuning", "multitask-prompt"])
def test_the_prompt_runs_once_at_batch_one_then_the_rows(
    backbones, make_model, toy_dataset, method
):
    model = make_model(backbones["tiny_gpt2"], method, n_tokens=3)
    assert _core_batches(model.backbone, _step(model, toy_dataset.train[:BATCH])) == [1, BATCH]


def test_a_prefix_without_bos_runs_no_prompt_pass(backbones, make_model, toy_dataset):
    """Prefix keys/values are given directly: with no BOS after them (GPT-2) only the rows
    run; with a BOS (Llama) the BOS token runs once at batch 1, since it sees the prefix."""
    rows = toy_dataset.train[:BATCH]
    gpt2 = make_model(backbones["tiny_gpt2"], "prefix-tuning", n_tokens=3)
    assert _core_batches(gpt2.backbone, _step(gpt2, rows)) == [BATCH]
    llama = make_model(backbones["tiny_llama"], "prefix-tuning", n_tokens=3)
    assert _core_batches(llama.backbone, _step(llama, rows)) == [1, BATCH]


def test_two_multitask_prompts_run_stacked_once(backbones, make_model, toy_dataset):
    """Two tasks sharing P*: each task prompt is computed once and both run in one
    batch-2 pass, whatever the number of rows of each task."""
    backbone = backbones["tiny_gpt2"]
    tasks = {name: make_model(backbone, "multitask-prompt", n_tokens=3) for name in "ab"}
    model = MultiTaskModel(tasks)
    calls = [Calls(task.method) for task in tasks.values()]
    rows = [("a" if i % 3 else "b", e) for i, e in enumerate(toy_dataset.train[:BATCH])]
    batches = _core_batches(backbone, lambda: model(model.collate(rows)).loss.backward())
    assert batches == [2, BATCH]
    assert [len(c.shapes) for c in calls] == [1, 1]
