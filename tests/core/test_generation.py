"""Generation: the loss is the HF causal-LM loss on the target tokens only, and greedy
decoding with the cached prompt prefix equals a naive greedy loop over the full model."""

from __future__ import annotations

import pytest
import torch

from softprompt.data import Example
from softprompt.tasks.generation import GenerationTask

ATOL = 1e-5
EXAMPLES = [
    Example("the movie was good", "positive"),
    Example("i hated this boring film so much", "a waste of time"),
    Example("bad", "it was not fun but sad"),
]


@pytest.fixture(params=["tiny_llama", "tiny_gpt2"])
def causal(request, backbones):
    return backbones[request.param]


def _generation_model(make_model, backbone, max_new_tokens=4, seed=0):
    model = make_model(
        backbone,
        task={
            "kind": "generation",
            "template": "{text} answer :",
            "max_new_tokens": max_new_tokens,
        },
        n_tokens=3,
        seed=seed,
    )
    assert isinstance(model.task, GenerationTask)
    return model


def _prefix(backbone, prompt: torch.Tensor, rows: int) -> torch.Tensor:
    embed = backbone.input_embeddings()
    parts = []
    if backbone.spec.bos_token_id is not None:
        parts.append(embed(torch.full((rows, 1), backbone.spec.bos_token_id)))
    parts.append(prompt.unsqueeze(0).expand(rows, -1, -1))
    return torch.cat(parts, dim=1)


def _context(model, text: str) -> list[int]:
    return model.task.template.encode(model.task.tokenizer, text, model.task.config.max_text_tokens)


def test_loss_equals_hf_loss_on_target_tokens_only(make_model, causal):
    model = _generation_model(make_model, causal)
    tok, eos, pad = causal.tokenizer, causal.spec.eos_token_id, causal.spec.pad_token_id
    rows, labels = [], []
    for e in EXAMPLES:
        context = _context(model, e.text)
        target = tok(e.label, add_special_tokens=False)["input_ids"] + [eos]
        rows.append(context + target)
        labels.append([-100] * len(context) + target)
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])

    prefix = _prefix(causal, model.method.embeddings, len(rows))
    m = prefix.shape[1]
    inputs = torch.cat([prefix, causal.input_embeddings()(ids)], dim=1)
    full_mask = torch.cat([torch.ones(len(rows), m, dtype=torch.long), mask], dim=1)
    full_labels = torch.cat([torch.full((len(rows), m), -100), lab], dim=1)
    naive = causal.model(inputs_embeds=inputs, attention_mask=full_mask, labels=full_labels).loss

    loss = model(model.collate(EXAMPLES)).loss
    torch.testing.assert_close(loss, naive, atol=ATOL, rtol=0)

    # a loss over all tokens (context included) is different: the context really is excluded
    everything = torch.where(
        full_mask.bool(), torch.cat([torch.full((len(rows), m), -100), ids], 1), -100
    )
    all_tokens = causal.model(
        inputs_embeds=inputs, attention_mask=full_mask, labels=everything
    ).loss
    assert abs(all_tokens.item() - loss.item()) > 1e-3

    # gradients reach the prompt and agree with the naive loss
    (grad,) = torch.autograd.grad(loss, model.method.embeddings)
    (naive_grad,) = torch.autograd.grad(naive, model.method.embeddings)
    assert grad.abs().max() > 0
    torch.testing.assert_close(grad, naive_grad, atol=ATOL, rtol=1e-4)


def test_row_loss_does_not_depend_on_its_neighbour(make_model, llama):
    """A longer neighbour only adds padding to a row: the batch loss is the token mean."""
    model = _generation_model(make_model, llama)
    a = Example("the movie was good", "great fun")
    with torch.no_grad():
        alone = model(model.collate([a])).loss
        # with a neighbour of equal target length, the batch mean is the mean of the two
        b = Example("i hated this boring film so much and it was too long", "not fun")
        pair = model(model.collate([a, b])).loss
        b_alone = model(model.collate([b])).loss
    torch.testing.assert_close(pair, (alone + b_alone) / 2, atol=ATOL, rtol=0)


def _naive_greedy(backbone, prompt: torch.Tensor, context: list[int], steps: int) -> list[int]:
    eos = backbone.spec.eos_token_id
    prefix = _prefix(backbone, prompt, 1)
    ids = list(context)
    out: list[int] = []
    for _ in range(steps):
        inputs = torch.cat([prefix, backbone.input_embeddings()(torch.tensor([ids]))], dim=1)
        token = int(backbone.model(inputs_embeds=inputs).logits[0, -1].argmax())
        out.append(token)
        if token == eos:
            break
        ids.append(token)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_greedy_generation_equals_naive_loop(make_model, causal, seed):
    model = _generation_model(make_model, causal, max_new_tokens=5, seed=seed)
    texts = [e.text for e in EXAMPLES]
    eos = causal.spec.eos_token_id
    with torch.no_grad():
        got = model.task.generate(model.injector, model.method(), texts)
        naive_tokens = [
            _naive_greedy(causal, model.method.embeddings, _context(model, t), 5) for t in texts
        ]
        one_by_one = [model.task.generate(model.injector, model.method(), [t])[0] for t in texts]
    expected = [
        causal.tokenizer.decode([t for t in row if t != eos], skip_special_tokens=True)
        for row in naive_tokens
    ]
    assert any(len(row) >= 2 for row in naive_tokens)
    assert got == expected
    assert one_by_one == expected  # left padding in the batch does not change a row
    assert model.predict(texts) == [{"text": t} for t in expected]
