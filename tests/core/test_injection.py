"""Injectors against naive references built directly on the HF model: the shared KV-prefix
path of the causal injector is exact (values and gradients), padding on either side and
the batch a row sits in do not change its scores."""

from __future__ import annotations

import pytest
import torch

from softprompt.data import Example
from softprompt.inject import CausalInjector, EncoderInjector, Prompt, RowPrompts, make_injector

ATOL = 1e-5
TEXTS = [
    "good",
    "the movie was really very good and fun",
    "a bad plot",
    "i hated this boring film so much",
]


def _ids(backbone, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Right-padded ids of the texts without special tokens: ids, mask, lengths."""
    rows = [backbone.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), backbone.spec.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask, [len(r) for r in rows]


def _prompt(backbone, rows: int, n: int = 3, seed: int = 0) -> torch.nn.Parameter:
    std = backbone.input_embeddings().weight.std().item()
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(rows, n, backbone.spec.hidden_size, generator=gen) * std)


def _as_prompt(param: torch.Tensor | None) -> Prompt | RowPrompts:
    """A (P, n, d) tensor -> one shared prompt (P == 1) or one prompt per row."""
    if param is None:
        return Prompt()
    if param.shape[0] == 1:
        return Prompt(embeds=param[0])
    return RowPrompts.per_row([Prompt(embeds=p) for p in param], range(param.shape[0]))


def _naive_causal(backbone, prompt: torch.Tensor | None, ids, mask):
    """[BOS?] + prompt + tokens through the full HF model in one pass: (hidden, logits, m)."""
    batch = ids.shape[0]
    embed = backbone.input_embeddings()
    parts = []
    if backbone.spec.bos_token_id is not None:
        parts.append(embed(torch.full((batch, 1), backbone.spec.bos_token_id)))
    if prompt is not None:
        parts.append(prompt.expand(batch, -1, -1))
    m = sum(p.shape[1] for p in parts)
    inputs = torch.cat(parts + [embed(ids)], dim=1)
    full_mask = torch.cat([torch.ones(batch, m, dtype=mask.dtype), mask], dim=1)
    out = backbone.model(inputs_embeds=inputs, attention_mask=full_mask, output_hidden_states=True)
    hidden = backbone.core()(inputs_embeds=inputs, attention_mask=full_mask).last_hidden_state
    return hidden[:, m:], out.logits[:, m:], m


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("prompt_rows", [0, 1, 4], ids=["no-prompt", "shared", "per-row"])
def test_causal_prefix_cache_equals_naive_concatenation(backbones, name, prompt_rows):
    backbone = backbones[name]
    ids, mask, lengths = _ids(backbone, TEXTS)
    injector = make_injector(backbone)
    assert isinstance(injector, CausalInjector)
    real = mask.bool()

    fast_param = _prompt(backbone, prompt_rows) if prompt_rows else None
    naive_param = torch.nn.Parameter(fast_param.detach().clone()) if prompt_rows else None
    fast = injector.hidden_states(_as_prompt(fast_param), ids, mask)
    naive, naive_logits, m = _naive_causal(backbone, naive_param, ids, mask)
    assert m == (backbone.spec.bos_token_id is not None) + (3 if prompt_rows else 0)
    assert fast.shape == (4, ids.shape[1], backbone.spec.hidden_size)
    torch.testing.assert_close(fast[real], naive[real], atol=ATOL, rtol=0)
    fast_logits = injector.logits(fast)
    torch.testing.assert_close(fast_logits[real], naive_logits[real], atol=ATOL, rtol=0)
    # the prompt actually matters (the comparison is not vacuous)
    if prompt_rows:
        without = injector.hidden_states(Prompt(), ids, mask)
        assert (without[real] - fast[real]).abs().max() > 1e-3

        weights = 0.01 * torch.randn(fast.shape, generator=torch.Generator().manual_seed(3))
        ((fast * weights)[real]).sum().backward()
        ((naive * weights)[real]).sum().backward()
        assert fast_param.grad.abs().max() > 0
        torch.testing.assert_close(fast_param.grad, naive_param.grad, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_causal_left_padding_equals_row_alone(backbones, name):
    backbone = backbones[name]
    injector = make_injector(backbone)
    prompt = Prompt(embeds=_prompt(backbone, 1)[0].detach())
    row = torch.tensor(
        [backbone.tokenizer("the plot was dull", add_special_tokens=False)["input_ids"]]
    )
    alone = injector.hidden_states(prompt, row, torch.ones_like(row))
    for pad in (1, 5):
        ids = torch.cat([torch.full((1, pad), backbone.spec.pad_token_id), row], dim=1)
        mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(row)], dim=1)
        padded = injector.hidden_states(prompt, ids, mask)
        torch.testing.assert_close(padded[:, pad:], alone, atol=ATOL, rtol=0)
    # mixed batch: one left-padded row next to a longer one
    other = torch.tensor([backbone.tokenizer(TEXTS[3], add_special_tokens=False)["input_ids"]])
    pad = other.shape[1] - row.shape[1]
    ids = torch.cat([torch.cat([torch.full((1, pad), backbone.spec.pad_token_id), row], 1), other])
    mask = torch.cat(
        [
            torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(row)], 1),
            torch.ones_like(other),
        ]
    )
    both = injector.hidden_states(prompt, ids, mask)
    torch.testing.assert_close(both[0, pad:], alone[0], atol=ATOL, rtol=0)


def test_encoder_injector_equals_naive_splice(bert):
    injector = make_injector(bert)
    assert isinstance(injector, EncoderInjector)
    rows = [bert.tokenizer(t)["input_ids"] for t in TEXTS]  # [CLS] ... [SEP]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    fast_param = _prompt(bert, 1)
    naive_param = torch.nn.Parameter(fast_param.detach().clone())
    fast = injector.hidden_states(Prompt(embeds=fast_param[0]), ids, mask)

    embed = bert.input_embeddings()
    tokens = embed(ids)
    inputs = torch.cat([tokens[:, :1], naive_param.expand(4, -1, -1), tokens[:, 1:]], dim=1)
    full_mask = torch.cat([mask[:, :1], torch.ones(4, 3, dtype=torch.long), mask[:, 1:]], dim=1)
    hidden = bert.model(inputs_embeds=inputs, attention_mask=full_mask).last_hidden_state
    naive = torch.cat([hidden[:, :1], hidden[:, 4:]], dim=1)
    real = mask.bool()
    torch.testing.assert_close(fast[real], naive[real], atol=ATOL, rtol=0)

    weights = 0.01 * torch.randn(fast.shape, generator=torch.Generator().manual_seed(3))
    ((fast * weights)[real]).sum().backward()
    ((naive * weights)[real]).sum().backward()
    torch.testing.assert_close(fast_param.grad, naive_param.grad, atol=ATOL, rtol=0)


TASKS = {
    "single-token": {},
    "multi-token": {
        "verbalizer": {"negative": [" very bad", " awful"], "positive": [" really good"]}
    },
    "linear-head": {"head": "linear"},
}
CASES = [("tiny_llama", "single-token"), ("tiny_gpt2", "single-token"), ("tiny_bert", "single-token"),
         ("tiny_llama", "multi-token"), ("tiny_gpt2", "multi-token"),
         ("tiny_llama", "linear-head"), ("tiny_gpt2", "linear-head")]  # fmt: skip


# every method that puts tokens in front; prefix-tuning refuses encoders (test_model_contract.py)
PROMPTED = ["soft-prompt", "p-tuning", "prefix-tuning"]
PADDING_CASES = [(name, task, method) for name, task in CASES for method in PROMPTED]


@pytest.mark.parametrize("name,task,method", PADDING_CASES)
def test_scores_do_not_depend_on_padding_or_batch_position(
    make_model, backbones, name, task, method
):
    model = make_model(backbones[name], method, task=TASKS[task], n_tokens=4)
    model.eval()
    target = Example("a dull plot", "negative")
    longer = [
        Example("the movie was really very good and fun and the acting was great", "positive"),
        Example("i hated this boring film so much it was a waste of time", "negative"),
    ]

    def scores(examples: list[Example]) -> torch.Tensor:
        with torch.no_grad():
            return model(model.collate(examples)).scores

    alone = scores([target])
    assert alone.shape == (1, 2)
    for batch, index in [
        ([target, *longer], 0),
        ([longer[0], target, longer[1]], 1),
        ([*longer, target], 2),
    ]:
        torch.testing.assert_close(scores(batch)[index], alone[0], atol=ATOL, rtol=0)
    # and the longer rows are scored the same whatever sits next to them
    torch.testing.assert_close(
        scores([longer[1], target])[0], scores([longer[1]])[0], atol=ATOL, rtol=0
    )
