"""The per-row prompt contract: a batch whose rows use different prompts (of different
lengths and methods) and different tasks gives every row what it gets run alone."""

from __future__ import annotations

import itertools

import pytest
import torch

from softprompt.data import Dataset, Example
from softprompt.inject import Prompt, RowPrompts
from softprompt.model import MultiTaskModel, PromptModel
from softprompt.tasks import TaskConfig
from softprompt.tasks.generation import greedy_decode, pad_left
from softprompt.train import TrainConfig, train
from softprompt.train.sampler import TaskSampler

ATOL = 1e-5
METHODS = {  # name -> options giving each a different prompt length
    "none": {},
    "soft-prompt": {"n_tokens": 2},
    "p-tuning": {"n_tokens": 4, "hidden": 16},
    "prefix-tuning": {"n_tokens": 3, "hidden": 16},
}
TEXTS = ["good", "the movie was really very good and fun", "a bad plot", "i hated it"]


def _method_model(backbone, method: str, seed: int = 0, **task) -> PromptModel:
    options = {**METHODS[method], **({"seed": seed} if method != "none" else {})}
    config = TaskConfig(labels=["negative", "positive"], template="review : {text} :", **task)
    model = PromptModel(backbone, config, method=method, method_options=options)
    with torch.no_grad():  # a trained-looking prompt, not the init (which may be near zero)
        for p in model.method.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)))
    return model


def _padded(backbone, texts: list[str], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [backbone.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if backbone.spec.kind == "encoder":
        rows = [[backbone.spec.bos_token_id, *r, backbone.tokenizer.sep_token_id] for r in rows]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), backbone.spec.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


PAIRS = [
    (a, b, name, side)
    for a, b in itertools.combinations_with_replacement(sorted(METHODS), 2)
    for name in ["tiny_llama", "tiny_gpt2", "tiny_bert"]
    for side in ["right", "left"]
    if not (name == "tiny_bert" and side == "left")
]


@pytest.mark.parametrize("first,second,name,side", PAIRS)
def test_every_method_pair_in_one_batch_equals_each_row_alone(backbones, first, second, name, side):
    backbone = backbones[name]
    models = [_method_model(backbone, first, seed=0), _method_model(backbone, second, seed=5)]
    prompts = [m.prompt() for m in models]
    choice = [0, 1, 1, 0]
    ids, mask = _padded(backbone, TEXTS, side)
    injector = models[0].injector
    with torch.no_grad():
        together = injector.hidden_states(RowPrompts.per_row(prompts, choice), ids, mask)
        for row, which in enumerate(choice):
            real = mask[row].bool()
            alone_ids = ids[row : row + 1, real]
            alone = injector.hidden_states(prompts[which], alone_ids, torch.ones_like(alone_ids))
            torch.testing.assert_close(together[row, real], alone[0], atol=ATOL, rtol=0)


def test_each_distinct_prompt_runs_once(llama):
    """k distinct prompts of one shape run stacked in one call, whatever B is."""
    models = [_method_model(llama, "soft-prompt", seed=s) for s in range(3)]
    ids, mask = _padded(llama, TEXTS * 2, "right")  # B = 8
    calls = []
    hook = llama.core().register_forward_hook(
        lambda m, args, kwargs, out: calls.append(kwargs["inputs_embeds"].shape), with_kwargs=True
    )
    try:
        rows = RowPrompts.per_row([m.prompt() for m in models], [0, 1, 2, 0, 1, 2, 0, 1])
        models[0].injector.hidden_states(rows, ids, mask)
    finally:
        hook.remove()
    # one call for the 3 prompts at batch 3 ([BOS] + 2 virtual tokens), one for the 8 rows
    assert calls == [torch.Size([3, 3, llama.spec.hidden_size]), torch.Size([8, ids.shape[1], 32])]


def test_rows_without_any_prefix_beside_prompted_rows(gpt2):
    """gpt2 adds no BOS, so a `none` row has no prefix at all: its slots are all masked."""
    soft = _method_model(gpt2, "soft-prompt")
    ids, mask = _padded(gpt2, TEXTS[:2], "left")
    with torch.no_grad():
        mixed = soft.injector.hidden_states(
            RowPrompts.per_row([Prompt(), soft.prompt()], [0, 1]), ids, mask
        )
        plain = gpt2.core()(input_ids=ids[:1, mask[0].bool()]).last_hidden_state
    torch.testing.assert_close(mixed[0, mask[0].bool()], plain[0], atol=ATOL, rtol=0)


# -- several tasks in one batch ---------------------------------------------------------

TASKS = {
    "sentiment": (
        "soft-prompt",
        {"labels": ["negative", "positive"], "template": "review : {text} :"},
    ),
    "topic": (
        "prefix-tuning",
        {
            "labels": ["sports", "politics", "science"],
            "template": "news : {text} topic :",
            "verbalizer": {"sports": [" team game"], "politics": [" vote"], "science": [" space"]},
        },
    ),
    "yesno": ("p-tuning", {"labels": ["no", "yes"], "template": "question : {text} answer :"}),
    "echo": (
        "soft-prompt",
        {"kind": "generation", "labels": [], "template": "text : {text} :", "max_new_tokens": 3},
    ),
}
ROWS = {
    "sentiment": [Example("a dull plot", "negative"), Example("great fun", "positive")],
    "topic": [Example("the team won the game", "sports"), Example("a vote on space", "science")],
    "yesno": [Example("is it good", "yes")],
    "echo": [Example("good movie", "good movie"), Example("bad", "bad film")],
}


def _multitask(backbone, tasks=TASKS) -> MultiTaskModel:
    models = {}
    for i, (name, (method, task)) in enumerate(tasks.items()):
        options = {**METHODS[method], "seed": i}
        models[name] = PromptModel(
            backbone, TaskConfig(**task), method=method, method_options=options
        )
    return MultiTaskModel(models)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_mixed_task_batch_equals_each_task_alone(backbones, name):
    model = _multitask(backbones[name])
    order = ["topic", "sentiment", "echo", "topic", "yesno", "sentiment", "echo"]
    seen = {n: 0 for n in ROWS}
    items = []
    for task in order:  # interleaved rows: single- and multi-token words, a head-less generation
        items.append((task, ROWS[task][seen[task] % len(ROWS[task])]))
        seen[task] += 1
    batch = model.collate(items)
    out = model(batch)
    out.loss.backward()
    mixed_grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    total = 0.0
    for task, part in batch.parts:
        alone = model.models[task](part)
        if alone.scores is not None:
            torch.testing.assert_close(out.outputs[task].scores, alone.scores, atol=ATOL, rtol=0)
        torch.testing.assert_close(out.outputs[task].loss, alone.loss, atol=ATOL, rtol=0)
        total = total + alone.loss
    total.backward()
    torch.testing.assert_close(out.loss, total, atol=ATOL, rtol=0)
    for key, grad in mixed_grads.items():
        torch.testing.assert_close(
            grad, dict(model.named_parameters())[key].grad, atol=ATOL, rtol=0
        )
    assert set(k.split(".")[1] for k in mixed_grads) == set(TASKS)


def test_predict_takes_task_text_pairs(llama):
    model = _multitask(llama)
    pairs = [("sentiment", "a dull plot"), ("echo", "good movie"), ("topic", "the team won"),
             ("echo", "bad"), ("yesno", "is it good")]  # fmt: skip
    got = model.predict(pairs)
    for (task, text), result in zip(pairs, got, strict=True):
        assert result["task"] == task
        expected = model.models[task].predict([text])[0]
        assert result.keys() - {"task"} == expected.keys()
        if "scores" in expected:
            assert result["label"] == expected["label"]
            assert result["scores"] == pytest.approx(expected["scores"], abs=1e-5)
        else:
            assert result["text"] == expected["text"]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_generation_with_per_row_prompts_equals_each_alone(backbones, name):
    backbone = backbones[name]
    task = {"kind": "generation", "labels": [], "template": "text : {text} :", "max_new_tokens": 5}
    models = [
        PromptModel(backbone, TaskConfig(**task), method="soft-prompt", method_options={"n_tokens": 2}),
        PromptModel(backbone, TaskConfig(**task), method="prefix-tuning", method_options={"n_tokens": 3, "hidden": 8}),
        PromptModel(backbone, TaskConfig(**task), method="none"),
    ]  # fmt: skip
    texts = ["good movie", "the plot was really dull and too long", "bad"]
    contexts = [models[0].task.contexts([Example(t, "")])[0] for t in texts]
    spec = backbone.spec
    for choice in ([0, 1, 2], [2, 2, 0], [1, 0, 1]):
        rows = RowPrompts.per_row([m.prompt() for m in models], choice)
        together = greedy_decode(
            models[0].injector, rows, contexts, pad_id=spec.pad_token_id,
            eos_id=spec.eos_token_id, max_new_tokens=[5, 5, 5],
        )  # fmt: skip
        for row, which in enumerate(choice):
            alone = models[which].task.generate(
                models[which].injector, models[which].prompt(), [texts[row]]
            )
            assert models[which].task.decode(together[row]) == alone[0]
    assert pad_left([[1], [1, 2]], 0)[0].tolist() == [[0, 1], [1, 2]]


# -- training several tasks at once -----------------------------------------------------


def _toy(name: str, labels: list[str], words: dict[str, list[str]], count: int) -> Dataset:
    rows = [
        Example(f"the {words[labels[i % len(labels)]][i % 2]} film", labels[i % len(labels)])
        for i in range(count)
    ]
    return Dataset(name, "classification", labels, rows, rows[:4], rows[:4])


SENTIMENT = _toy(
    "sent", ["negative", "positive"], {"negative": ["bad", "dull"], "positive": ["good", "fun"]}, 16
)
TOPIC = _toy("topic", ["sports", "politics", "science"], {"sports": ["team", "game"], "politics": ["vote", "news"], "science": ["space", "computer"]}, 12)  # fmt: skip


def _two_tasks(llama) -> tuple[MultiTaskModel, dict[str, Dataset]]:
    tasks = {
        "sentiment": ("soft-prompt", {"labels": SENTIMENT.labels, "template": "review : {text} :"}),
        "topic": ("prefix-tuning", {"labels": TOPIC.labels, "template": "news : {text} topic :"}),
    }
    return _multitask(llama, tasks), {"sentiment": SENTIMENT, "topic": TOPIC}


def test_multitask_training_equals_each_task_alone_on_its_rows(llama, tmp_path):
    """Each prompt ends where training it alone on its rows of each mixed batch ends."""
    model, data = _two_tasks(llama)
    config = TrainConfig(
        steps=4, batch_size=6, eval_every=4, eval_examples=4, warmup_steps=1, lr=0.05
    )
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, data, config, tmp_path, progress=False)
    assert set(result.prompt_paths) == {"sentiment", "topic"}
    assert all(p.exists() and p.parent.name in data for p in result.prompt_paths.values())

    sampler = TaskSampler(
        {n: d.train for n, d in data.items()}, batch_size=6, seed=0, micro_batches=4
    )
    for task in data:
        alone = _two_tasks(llama)[0].models[task]
        alone.load_state_dict(
            {k.split(".", 2)[2]: v for k, v in start.items() if k.split(".")[1] == task}
        )
        optimizer = torch.optim.AdamW(
            alone.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        alone.train()
        for step in range(4):
            rows = [e for n, e in sampler.micro_batch(step) if n == task]
            if not rows:
                continue
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            alone(alone.collate(rows)).loss.backward()
            torch.nn.utils.clip_grad_norm_(alone.trainable_parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for key, value in alone.state_dict().items():
            trained = model.models[task].state_dict()[key]
            assert not torch.equal(trained, start[f"models.{task}.{key}"])
            torch.testing.assert_close(trained, value, atol=1e-5, rtol=0)


def test_multitask_run_logs_per_task_and_resumes_exactly(llama, tmp_path):
    config = TrainConfig(
        steps=6, batch_size=6, eval_every=2, eval_examples=4, warmup_steps=1, lr=0.05
    )
    whole, data = _two_tasks(llama)
    done = train(whole, data, config, tmp_path / "a", progress=False)
    evals = [h for h in done.history if h["kind"] == "eval"]
    assert {h["task"] for h in evals} == {"sentiment", "topic"} and len(evals) == 6
    assert (tmp_path / "a" / "curves.png").exists()

    part, _ = _two_tasks(llama)
    train(part, data, config, tmp_path / "b", progress=False, stop_after=3)
    rest, _ = _two_tasks(llama)
    train(rest, data, config, tmp_path / "b", progress=False, resume=True)
    for key, value in whole.state_dict().items():
        assert torch.equal(rest.state_dict()[key], value), key


def test_temperature_sampler_flattens_the_mixture():
    big = [Example(str(i), "a") for i in range(900)]
    small = [Example(str(i), "b") for i in range(100)]
    counts = {}
    for sampler, temperature in [("proportional", 1.0), ("temperature", 1000.0)]:
        plan = TaskSampler({"big": big, "small": small}, batch_size=10, seed=0, micro_batches=200,
                           sampler=sampler, temperature=temperature)  # fmt: skip
        rows = [n for i in range(200) for n, _ in plan.micro_batch(i)]
        counts[sampler] = rows.count("small") / len(rows)
    assert counts["proportional"] == pytest.approx(0.1, abs=0.03)
    assert counts["temperature"] == pytest.approx(0.5, abs=0.05)
