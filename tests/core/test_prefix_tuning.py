"""Prefix tuning: per-layer K/V shapes, the K/V path of the causal injector (BOS after the
prefix, padding and batch independence, generation), exact parity with PEFT's prefix tuning
(scores and gradients), resumable training, and a loss that goes down."""

from __future__ import annotations

import peft  # a dev dependency: the parity checks are not optional
import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from softprompt.backbones.tiny import tiny_gpt2, tiny_llama
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.inject import Prompt, RowPrompts, make_injector
from softprompt.methods.prefix_tuning import PrefixTuningConfig
from softprompt.model import PromptModel
from softprompt.train import train

CAUSAL = ["tiny_llama", "tiny_gpt2"]
ATOL = 1e-5


def _kv_params(spec, n: int) -> int:
    return spec.num_layers * 2 * spec.num_kv_heads * n * spec.head_dim


@pytest.mark.parametrize(
    "options,key",
    [
        ({"n_tokens": 0}, "method.n_tokens"),
        ({"hidden": 0}, "method.hidden"),
        ({"reparameterize": "yes"}, "method.reparameterize"),
        ({"init": "zeros"}, "method.init"),
        ({"init": "text"}, "method.init_text"),
        ({"lr_scale": 0.0}, "method.lr_scale"),
        ({"lr_scale": float("inf")}, "method.lr_scale"),
    ],
)
def test_config_errors_name_the_key(options, key):
    with pytest.raises(ConfigError, match=key):
        PrefixTuningConfig(**options)


def _naive_bert_with_prefix(bert, kv, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BERT written out layer by layer from its weights, each layer's attention reading the
    prefix keys/values first (Li & Liang; P-tuning v2): (1, T, d) for one row."""
    layers = bert.model.encoder.layer
    heads, d = bert.spec.num_heads, bert.spec.hidden_size
    hd = d // heads
    x = bert.model.embeddings(inputs_embeds=embeds)  # (1, T, d): + positions, types, LN
    for layer, (pk, pv) in zip(layers, kv, strict=True):
        attn = layer.attention
        split = lambda t: t.view(1, -1, heads, hd).transpose(1, 2)  # noqa: E731  (1, h, T, hd)
        q, k, v = split(attn.self.query(x)), split(attn.self.key(x)), split(attn.self.value(x))
        k, v = torch.cat([pk[None], k], 2), torch.cat([pv[None], v], 2)  # (1, h, m + T, hd)
        scores = q @ k.transpose(-1, -2) / hd**0.5  # (1, h, T, m + T)
        keep = torch.cat([torch.ones(pk.shape[1], dtype=torch.bool), mask.bool()])
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, -1, d)  # (1, T, d)
        x = attn.output.LayerNorm(attn.output.dense(context) + x)
        x = layer.output.LayerNorm(layer.output.dense(layer.intermediate(x)) + x)
    return x


def test_encoder_deep_prompts_equal_a_layer_by_layer_reference(make_model, bert, toy_dataset):
    """P-tuning v2 on an encoder: per-layer K/V every token attends to, no positions used."""
    model = make_model(bert, "prefix-tuning", n_tokens=3, hidden=16)
    batch = model.collate(toy_dataset.test[:3])
    hidden = model.injector.hidden_states(
        model.prompt(), batch["input_ids"], batch["attention_mask"]
    )
    weights = torch.randn(hidden.shape, generator=torch.Generator().manual_seed(0))
    (hidden * weights * batch["attention_mask"][..., None]).sum().backward()
    ours = {k: p.grad.clone() for k, p in model.method.named_parameters()}
    model.zero_grad()
    kv = model.prompt().kv
    total = 0.0
    for row in range(3):
        length = int(batch["attention_mask"][row].sum())
        ids = batch["input_ids"][row, :length]
        naive = _naive_bert_with_prefix(
            bert, kv, bert.input_embeddings()(ids)[None], torch.ones(length)
        )
        torch.testing.assert_close(hidden[row, :length], naive[0], atol=ATOL, rtol=0)
        total = total + (naive[0] * weights[row, :length]).sum()
    total.backward()
    for name, param in model.method.named_parameters():
        assert ours[name].abs().max() > 0
        torch.testing.assert_close(ours[name], param.grad, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("reparameterize", [True, False], ids=["mlp", "direct"])
def test_prompt_shapes_and_parameter_count(make_model, backbones, name, reparameterize):
    spec = backbones[name].spec
    model = make_model(
        backbones[name], "prefix-tuning", n_tokens=3, hidden=16, reparameterize=reparameterize
    )
    prompt = model.method()
    assert prompt.embeds is None and (prompt.length, prompt.n_kv) == (3, 3)
    assert len(prompt.kv) == spec.num_layers
    for keys, values in prompt.kv:
        assert keys.shape == values.shape == (spec.num_kv_heads, 3, spec.head_dim)
    d, width = spec.hidden_size, _kv_params(spec, 1)
    expected = 3 * d + d * 16 + 16 + 16 * width + width if reparameterize else _kv_params(spec, 3)
    assert model.num_trainable() == expected


def test_mlp_runs_once_per_forward(make_model, llama, toy_dataset):
    model = make_model(llama, "prefix-tuning", n_tokens=3, hidden=16)
    calls = []
    model.method.mlp.register_forward_hook(lambda module, args, out: calls.append(out.shape))
    model(model.collate(toy_dataset.train[:8]))
    assert calls == [torch.Size([3, _kv_params(llama.spec, 1)])]


@pytest.mark.parametrize("name", CAUSAL)
def test_direct_prefix_starts_as_the_backbones_own_kv(make_model, backbones, name):
    backbone = backbones[name]
    text = "a great film"
    model = make_model(
        backbone, "prefix-tuning", n_tokens=3, reparameterize=False, init="text", init_text=text
    )
    ids = backbone.tokenizer(text)["input_ids"]  # with BOS where the tokenizer adds one
    out = backbone.model(input_ids=torch.tensor([ids]), use_cache=True)
    for layer, (keys, values) in zip(out.past_key_values.layers, model.method().kv, strict=True):
        torch.testing.assert_close(keys, layer.keys[0, :, -3:], atol=ATOL, rtol=0)
        torch.testing.assert_close(values, layer.values[0, :, -3:], atol=ATOL, rtol=0)


def test_direct_prefix_save_load_round_trip(make_model, gpt2, toy_dataset, tmp_path):
    model = make_model(gpt2, "prefix-tuning", n_tokens=3, reparameterize=False)
    with torch.no_grad():
        model.method.prefix.add_(torch.randn(model.method.prefix.shape))
    loaded = PromptModel.load(model.save(tmp_path / "p.safetensors"), gpt2)
    assert torch.equal(loaded.method.prefix, model.method.prefix)
    batch = model.collate(toy_dataset.test)
    with torch.no_grad():
        assert torch.equal(loaded(batch).scores, model(batch).scores)


def _one_adam_step(model, batch, lr: float = 1e-3) -> dict[str, torch.Tensor]:
    """How far one Adam step on `batch` moves each prefix parameter as the model uses it
    (stored value x lr_scale)."""
    scale = model.method.config.lr_scale
    before = {k: p.detach().clone() for k, p in model.method.named_parameters()}
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=lr, eps=1e-30)
    model(batch).loss.backward()
    optimizer.step()
    return {k: (p.detach() - before[k]) * scale for k, p in model.method.named_parameters()}


@pytest.mark.parametrize("reparameterize", [True, False], ids=["mlp", "direct"])
def test_lr_scale_keeps_the_init_and_scales_every_prefix_step(
    make_model, gpt2, toy_dataset, reparameterize
):
    """Same K/V at init; Adam's first step (lr x sign of the gradient, eps ~0) then moves
    every prefix parameter, as used, lr_scale as far."""
    models = {}
    for scale in (1.0, 0.01):
        torch.manual_seed(0)
        models[scale] = make_model(
            gpt2, "prefix-tuning", n_tokens=3, hidden=16, reparameterize=reparameterize,
            lr_scale=scale,
        )  # fmt: skip
    kv = {scale: model.method.kv_tensor().detach() for scale, model in models.items()}
    torch.testing.assert_close(kv[0.01], kv[1.0], atol=1e-6, rtol=1e-5)
    batch = models[1.0].collate(toy_dataset.train[:8])
    step = {scale: _one_adam_step(model, batch) for scale, model in models.items()}
    for name, full in step[1.0].items():
        moved = full.abs() > 0.5e-3  # a nonzero gradient: a step of lr (eps is ~0)
        assert moved.float().mean() > 0.5, name
        # rtol: the stored values are 100x larger at lr_scale 0.01, so float32 keeps ~1% of lr
        torch.testing.assert_close(step[0.01][name][moved], 0.01 * full[moved], rtol=2e-2, atol=0)


@pytest.mark.parametrize("reparameterize", [True, False], ids=["mlp", "direct"])
def test_lr_scaled_prefix_saves_loads_and_flattens_to_the_same_scores(
    make_model, gpt2, toy_dataset, tmp_path, reparameterize
):
    model = make_model(
        gpt2, "prefix-tuning", n_tokens=3, hidden=16, reparameterize=reparameterize, lr_scale=0.1
    )
    batch = model.collate(toy_dataset.test)
    _one_adam_step(model, model.collate(toy_dataset.train[:8]))  # away from the init
    loaded = PromptModel.load(model.save(tmp_path / "p.safetensors"), gpt2)
    flat = model.flattened()
    assert flat.method.config.lr_scale == 1.0 and not flat.method.config.reparameterize
    with torch.no_grad():
        assert torch.equal(loaded(batch).scores, model(batch).scores)
        torch.testing.assert_close(flat(batch).scores, model(batch).scores, atol=ATOL, rtol=0)


# -- the K/V path of the causal injector -----------------------------------------------


def _random_kv(spec, rows: int, n: int, seed: int) -> list[tuple[tuple[torch.Tensor, ...]]]:
    """`rows` random K/V prefixes, each L x 2 x (kvh, n, hd)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (rows, spec.num_layers, 2, spec.num_kv_heads, n, spec.head_dim)
    kv = torch.randn(shape, generator=gen)  # (P, L, 2, kvh, n, hd)
    return [tuple((layer[0], layer[1]) for layer in prompt) for prompt in kv]


def _ids(backbone, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [backbone.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), backbone.spec.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


@pytest.mark.parametrize("name", CAUSAL)
def test_per_row_prefixes_equal_each_row_alone(backbones, name):
    """P == B rows of K/V (the multitask/serving case) against P == 1 per row, padding included."""
    backbone = backbones[name]
    injector = make_injector(backbone)
    ids, mask = _ids(backbone, ["good", "the plot was really dull", "a bad film"])
    kv = _random_kv(backbone.spec, 3, 4, seed=0)
    rows = RowPrompts.per_row([Prompt(kv=p) for p in kv], range(3))
    together = injector.hidden_states(rows, ids, mask)  # (3, T, d)
    for row in range(3):
        length = int(mask[row].sum())
        alone = injector.hidden_states(
            Prompt(kv=kv[row]), ids[row : row + 1, :length], mask[row : row + 1, :length]
        )
        torch.testing.assert_close(together[row, :length], alone[0], atol=ATOL, rtol=0)


def test_prompt_with_embeds_and_kv_equals_naive_order(llama):
    """K/V prefix, then BOS, then virtual tokens: the same as feeding BOS + embeds on top of
    the prefix by hand."""
    injector = make_injector(llama)
    ids, mask = _ids(llama, ["good film"])
    embeds = torch.randn(2, llama.spec.hidden_size, generator=torch.Generator().manual_seed(1))
    kv = _random_kv(llama.spec, 1, 3, 0)[0]
    prompt = Prompt(embeds=embeds, kv=kv)
    assert prompt.length == 5
    got = injector.hidden_states(prompt, ids, mask)
    cache = DynamicCache(config=llama.model.config)
    for index, (keys, values) in enumerate(kv):
        cache.update(keys[None], values[None], index)
    bos = llama.input_embeddings()(torch.tensor([[llama.spec.bos_token_id]]))
    inputs = torch.cat([bos, embeds[None], llama.input_embeddings()(ids)], 1)  # (1, 1 + 2 + T, d)
    positions = torch.arange(3, 3 + inputs.shape[1])[None]
    naive = llama.core()(inputs_embeds=inputs, position_ids=positions, cache=cache)
    torch.testing.assert_close(got[0], naive.last_hidden_state[0, 3:], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", CAUSAL)
def test_generation_on_the_kv_cache_equals_recomputing(make_model, backbones, name):
    """Greedy decoding (left padding, cache grown step by step) against full recomputation."""
    backbone = backbones[name]
    model = make_model(
        backbone, "prefix-tuning", task={"kind": "generation", "max_new_tokens": 4}, n_tokens=3
    )
    task, injector = model.task, model.injector
    texts = ["good", "the plot was really dull"]
    with torch.no_grad():
        prompt = model.method()
        generated = task.generate(injector, prompt, texts)
        for text, got in zip(texts, generated, strict=True):
            ids = task.contexts([Example(text=text, label="")])[0]
            out = []
            for _ in range(4):
                row = torch.tensor([ids + out])
                hidden = injector.hidden_states(model.method(), row, torch.ones_like(row))
                token = int(injector.logits(hidden[0, -1]).argmax())
                if token == task.eos_id:
                    break
                out.append(token)
            assert got == backbone.tokenizer.decode(out, skip_special_tokens=True)


# -- parity with PEFT ------------------------------------------------------------------

N = 4


def _peft_pair(make_model, build, reparameterize: bool, hidden: int = 16):
    """Ours and PEFT's prefix tuning on one fresh backbone, with the same prefix.

    PEFT's prefix is an Embedding (n, L * 2 * kvh * hd) that `get_prompt` views as
    (B, n, L * 2, kvh, hd) and permutes to per-layer (B, kvh, n, hd) keys then values:
    our (L, 2, kvh, n, hd) tensor permuted to (n, L, 2, kvh, hd) is that layout exactly.
    With `prefix_projection`, PEFT's MLP maps a token_dim = kvh * hd embedding, so its
    weights line up with ours only where kvh * hd == d (GPT-2, not GQA llama).
    """
    backbone = build()  # fresh: PEFT wraps the model
    ours = make_model(
        backbone, "prefix-tuning", n_tokens=N, reparameterize=reparameterize, hidden=hidden
    )
    config = peft.PrefixTuningConfig(
        task_type=peft.TaskType.CAUSAL_LM,
        num_virtual_tokens=N,
        prefix_projection=reparameterize,
        encoder_hidden_size=hidden,
    )
    theirs = peft.get_peft_model(backbone.model, config)
    encoder = theirs.prompt_encoder.default
    with torch.no_grad():
        if reparameterize:
            encoder.embedding.weight.copy_(ours.method.embeddings)
            for mine, peft_layer in zip(ours.method.mlp, encoder.transform, strict=True):
                for name, tensor in mine.named_parameters():
                    getattr(peft_layer, name).copy_(tensor)
        else:
            encoder.embedding.weight.copy_(ours.method.prefix.permute(3, 0, 1, 2, 4).reshape(N, -1))
    return ours, theirs


def _peft_scores(ours, theirs, batch) -> torch.Tensor:
    """PEFT's input ids carry BOS (as its users tokenize); it sits after the virtual K/V."""
    ids, mask, answer = batch["input_ids"], batch["attention_mask"], batch["answer_index"]
    bos = ours.backbone.spec.bos_token_id
    if bos is not None:
        ids = torch.cat([torch.full((len(ids), 1), bos), ids], dim=1)
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        answer = answer + 1
    logits = theirs(input_ids=ids, attention_mask=mask).logits  # (B, T, V), real tokens only
    word_rows = torch.tensor([ws[0][0] for ws in ours.task.word_ids])
    return logits[torch.arange(len(ids)), answer][:, word_rows]  # (B, C)


PARITY = [(tiny_gpt2, False), (tiny_llama, False), (tiny_gpt2, True)]
PARITY_IDS = ["gpt2-direct", "llama-direct", "gpt2-mlp"]


@pytest.mark.parametrize("build,reparameterize", PARITY, ids=PARITY_IDS)
def test_scores_and_gradients_match_peft(make_model, toy_dataset, build, reparameterize):
    ours, theirs = _peft_pair(make_model, build, reparameterize)
    batch = ours.collate(toy_dataset.train[:6])
    mine = ours(batch)
    peft_scores = _peft_scores(ours, theirs, batch)
    torch.testing.assert_close(mine.scores, peft_scores, atol=1e-6, rtol=1e-5)

    mine.loss.backward()
    F.cross_entropy(peft_scores, batch["targets"]).backward()
    encoder = theirs.prompt_encoder.default
    if reparameterize:
        pairs = [(ours.method.embeddings.grad, encoder.embedding.weight.grad)]
        pairs += [
            (a.grad, b.grad)
            for a, b in zip(
                ours.method.mlp.parameters(), encoder.transform.parameters(), strict=True
            )
        ]
    else:
        grad = ours.method.prefix.grad.permute(3, 0, 1, 2, 4).reshape(N, -1)
        pairs = [(grad, encoder.embedding.weight.grad)]
    for got, expected in pairs:
        assert got.abs().sum() > 0
        torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-4)


# -- training ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options",
    [("tiny_llama", {"hidden": 32}), ("tiny_gpt2", {"reparameterize": False})],
    ids=["llama-mlp", "gpt2-direct"],
)
def test_ten_steps_reduce_the_training_loss(make_model, backbones, toy_dataset, name, options):
    model = make_model(backbones[name], "prefix-tuning", n_tokens=4, **options)
    batch = model.collate(toy_dataset.train)
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3e-2)
    losses = []
    for _ in range(10):
        loss = model(batch).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        final = model(batch).loss.item()
    # a random 2-layer model moves its label-word scores only a little: ~0.004 of ~0.69
    assert final < losses[0] - 2e-3, losses + [final]


def test_resume_equals_uninterrupted(make_model, llama, toy_dataset, fast_config, tmp_path):
    """The MLP is part of the saved state, so an interrupted run resumes exactly."""
    config = fast_config(steps=4, eval_every=2)
    straight = make_model(llama, "prefix-tuning", n_tokens=3, hidden=16)
    train(straight, toy_dataset, config, tmp_path / "a", progress=False)
    first = make_model(llama, "prefix-tuning", n_tokens=3, hidden=16)
    train(first, toy_dataset, config, tmp_path / "b", progress=False, stop_after=2)
    second = make_model(llama, "prefix-tuning", n_tokens=3, hidden=16)
    train(second, toy_dataset, config, tmp_path / "b", progress=False, resume=True)
    for key, value in straight.state_dict().items():
        assert torch.equal(second.state_dict()[key], value), key
