"""Multitask prompt tuning: one shared prompt, a rank-r part per task (Wang et al. 2023)."""

from __future__ import annotations

import torch

from softprompt.data import Dataset, Example
from softprompt.model import MultiTaskModel, PromptModel
from softprompt.tasks import TaskConfig
from softprompt.train import TrainConfig, train


def _toy(name: str, words: dict[str, list[str]], count: int) -> Dataset:
    labels = list(words)
    rows = [
        Example(f"the {words[labels[i % len(labels)]][i % 2]} film", labels[i % len(labels)])
        for i in range(count)
    ]
    return Dataset(name, "classification", labels, rows, rows[:4], rows[:4])


SENTIMENT = _toy("sent", {"negative": ["bad", "dull"], "positive": ["good", "fun"]}, 16)
TOPIC = _toy(
    "topic",
    {"sports": ["team", "game"], "politics": ["vote", "news"], "science": ["space", "computer"]},
    12,
)

OPTIONS = {"n_tokens": 3, "rank": 2}


def _mpt(llama, shared) -> MultiTaskModel:
    tasks = {
        "sentiment": TaskConfig(labels=SENTIMENT.labels, template="review : {text} :"),
        "topic": TaskConfig(labels=TOPIC.labels, template="news : {text} topic :"),
    }
    return MultiTaskModel(
        {
            n: PromptModel(llama, c, "multitask-prompt", OPTIONS, shared=shared)
            for n, c in tasks.items()
        }
    )


def test_tasks_share_one_prompt_and_start_from_it(llama):
    model = _mpt(llama, shared={})
    a, b = (model.models[n].method for n in ("sentiment", "topic"))
    assert a.shared is b.shared
    n, d = 3, llama.spec.hidden_size
    assert model.num_trainable() == n * d + 2 * 2 * (n + d)  # P* once, U and V per task
    torch.testing.assert_close(a().embeds, a.shared.embeddings)  # U Vᵀ = 1 at the start
    alone = _mpt(llama, shared=None)  # no sharing asked: each task its own P*
    assert alone.models["sentiment"].method.shared is not alone.models["topic"].method.shared


def test_training_moves_the_shared_prompt_and_each_tasks_part(llama, tmp_path):
    model = _mpt(llama, shared={})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(
        steps=4, batch_size=6, eval_every=2, eval_examples=4, warmup_steps=1, lr=0.05
    )
    data = {"sentiment": SENTIMENT, "topic": TOPIC}
    train(model, data, config, tmp_path / "run", progress=False)
    after = model.state_dict()
    assert all(not torch.equal(after[k], before[k]) for k in after)
    a, b = (model.models[n].method for n in ("sentiment", "topic"))
    assert not torch.allclose(a.task_rows, b.task_rows)  # the task parts diverge
    # resume from the checkpoint (P* saved under both tasks' names) ends the same
    again = _mpt(llama, shared={})
    train(again, data, config, tmp_path / "b", progress=False, stop_after=2)
    resumed = _mpt(llama, shared={})
    train(resumed, data, config, tmp_path / "b", progress=False, resume=True)
    assert resumed.models["sentiment"].method.shared is resumed.models["topic"].method.shared
    for key, value in after.items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_task_file_loads_alone_flattens_and_seeds_a_new_task(llama, tmp_path):
    model = _mpt(llama, shared={})
    with torch.no_grad():
        model.models["topic"].method.task_rows.mul_(1.5)
    path = model.models["topic"].save(tmp_path / "topic.safetensors")
    loaded = PromptModel.load(path, llama)
    torch.testing.assert_close(loaded.prompt().embeds, model.models["topic"].prompt().embeds)
    flat = loaded.flattened()
    assert flat.method_name == "soft-prompt"
    torch.testing.assert_close(flat.prompt().embeds, loaded.prompt().embeds)
    target = PromptModel(
        llama,
        TaskConfig(labels=["no", "yes"], template="{text} ?"),
        "multitask-prompt",
        {**OPTIONS, "init": "file", "init_file": str(path)},
    )
    torch.testing.assert_close(target.method.shared.embeddings, loaded.method.shared.embeddings)
