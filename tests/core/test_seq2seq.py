"""Encoder-decoder backbones (T5, BART), on tiny random models built in code: the same
logits as PEFT's SEQ_2_SEQ_LM prompt tuning and prefix tuning, label words scored by
the decoder, greedy generation as PEFT's, and rows independent of each other."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch
import torch.nn.functional as F

from softprompt.backbones import load_backbone
from softprompt.backbones.tiny import tiny_seq2seq
from softprompt.data import Example
from softprompt.errors import BackboneError, ConfigError
from softprompt.inject import Prompt, RowPrompts, Seq2SeqInjector, make_injector
from softprompt.model import MultiTaskModel, PromptModel
from softprompt.tasks import TaskConfig

FAMILIES = ["t5", "bart"]
TEXTS = ["the movie was good and fun", "bad", "a boring plot , i hated it , too long"]
TARGETS = ["great film", "awful", "boring story"]
MULTI = {"positive": [" good movie", " great"], "negative": [" bad plot"]}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


def _peft(backbone, config) -> peft.PeftModel:
    """PEFT around its own copy of the frozen model (it may touch what it wraps)."""
    theirs = peft.get_peft_model(copy.deepcopy(backbone.model), config)
    return theirs.eval()


def _model(backbone, method="soft-prompt", words=None, **options) -> PromptModel:
    task = TaskConfig(labels=["positive", "negative"], template="review : {text}", verbalizer=words)
    model = PromptModel(backbone, task, method=method, method_options={"n_tokens": 4, **options})
    with torch.no_grad():  # a prompt far from any init, so a misplaced one shows
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    return model


def _logits(model: PromptModel, batch) -> torch.Tensor:
    """Our (R, T, V) decoder logits for a collated batch."""
    injector = model.injector
    hidden = injector.decoder_states(
        model.prompt(),
        batch["input_ids"],
        batch["attention_mask"],
        batch["decoder_input_ids"],
        batch["decoder_attention_mask"],
    )
    return injector.logits(hidden)


def _generation_batch(model: PromptModel):
    examples = [Example(t, y) for t, y in zip(TEXTS, TARGETS, strict=True)]
    return model.collate(examples)


def _assert_logits_match(ours: PromptModel, theirs, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Our decoder logits equal the PEFT model's on every real (unpadded) target position;
    returns PEFT's logits and that position mask for further checks."""
    expected = theirs(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
        decoder_attention_mask=batch["decoder_attention_mask"],
    ).logits
    real = batch["decoder_attention_mask"].bool()
    torch.testing.assert_close(_logits(ours, batch)[real], expected[real], atol=1e-5, rtol=1e-5)
    return expected, real


def test_a_tiny_encoder_decoder_is_a_seq2seq_backbone(family):
    backbone = tiny_seq2seq(family)
    assert backbone.spec.kind == "seq2seq-lm" and backbone.spec.num_layers == 2
    assert isinstance(make_injector(backbone), Seq2SeqInjector)
    assert tiny_seq2seq(family).fingerprint == backbone.fingerprint  # deterministic


@torch.no_grad()
def test_prompt_tuning_logits_match_peft(family):
    backbone = tiny_seq2seq(family)
    ours = PromptModel(
        backbone, TaskConfig(kind="generation"), "soft-prompt", {"n_tokens": 4, "init": "random"}
    )
    ours.method.embeddings.copy_(torch.randn(4, 32, generator=torch.Generator().manual_seed(1)))
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=4)
    theirs = _peft(backbone, config)
    theirs.prompt_encoder.default.embedding.weight[:4] = ours.method.embeddings  # PEFT: 2n rows
    batch = _generation_batch(ours)
    expected, real = _assert_logits_match(ours, theirs, batch)
    plain = backbone.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
    ).logits
    assert (plain[real] - expected[real]).abs().max() > 1e-2  # the prompt matters


@torch.no_grad()
def test_prefix_tuning_logits_match_peft(family):
    """PEFT passes the prefix as the whole model's cache: the decoder's self-attention gets
    it, the encoder never sees it. Our direct prefix is set to the K/V PEFT feeds each
    decoder layer (PEFT repeats its first layers' slots on seq2seq, see the module doc)."""
    backbone = tiny_seq2seq(family)
    config = peft.PrefixTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=3)
    theirs = _peft(backbone, config)
    torch.nn.init.normal_(theirs.prompt_encoder.default.embedding.weight)
    cache = theirs.get_prompt(batch_size=1).self_attention_cache
    fed = torch.stack([torch.stack([lay.keys[0], lay.values[0]]) for lay in cache.layers])
    ours = PromptModel(
        backbone,
        TaskConfig(kind="generation"),
        "prefix-tuning",
        {"n_tokens": 3, "reparameterize": False},
    )
    ours.method.prefix.copy_(fed)  # (L, 2, h, n, hd)
    batch = _generation_batch(ours)
    _assert_logits_match(ours, theirs, batch)


def test_prompt_gradients_match_peft(family):
    backbone = tiny_seq2seq(family)
    ours = PromptModel(
        backbone, TaskConfig(kind="generation"), "soft-prompt", {"n_tokens": 4, "init": "vocab"}
    )
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=4)
    theirs = _peft(backbone, config)
    with torch.no_grad():
        theirs.prompt_encoder.default.embedding.weight[:4] = ours.method.embeddings
    batch = _generation_batch(ours)
    ours(batch).loss.backward()
    logits = theirs(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        decoder_input_ids=batch["decoder_input_ids"],
        decoder_attention_mask=batch["decoder_attention_mask"],
    ).logits
    targets = batch["score_tokens"].masked_fill(batch["decoder_attention_mask"] == 0, -100)
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    peft_grad = theirs.prompt_encoder.default.embedding.weight.grad[:4]
    assert ours.method.embeddings.grad.abs().sum() > 0
    torch.testing.assert_close(ours.method.embeddings.grad, peft_grad, atol=1e-6, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("words", [None, MULTI], ids=["single-token", "multi-token"])
def test_label_words_are_scored_by_the_decoder_as_peft_scores_them(family, words):
    """Class c's score: log-sum-exp over its words of each word's summed token log-probs
    under teacher forcing from the decoder start token (single-token words: logits)."""
    backbone = tiny_seq2seq(family)
    ours = _model(backbone, words=words)
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=4)
    theirs = _peft(backbone, config)
    theirs.prompt_encoder.default.embedding.weight[:4] = ours.method.embeddings
    examples = [Example(t, "positive") for t in TEXTS]
    batch = ours.collate(examples)
    start = backbone.model.config.decoder_start_token_id
    expected = []
    for row in range(len(TEXTS)):
        per_class = []
        for word_list in ours.task.word_ids:
            scores = []
            for ids in word_list:
                decoder = torch.tensor([[start, *ids[:-1]]])
                logits = theirs(
                    input_ids=batch["input_ids"][row : row + 1],
                    attention_mask=batch["attention_mask"][row : row + 1],
                    decoder_input_ids=decoder,
                ).logits[0]
                if words is None:
                    scores.append(logits[0, ids[0]])
                else:
                    log_probs = logits.log_softmax(-1)
                    scores.append(sum(log_probs[j, t] for j, t in enumerate(ids)))
            per_class.append(torch.stack(scores).logsumexp(0))
        expected.append(torch.stack(per_class))
    torch.testing.assert_close(ours(batch).scores, torch.stack(expected), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_greedy_generation_matches_peft_generate(family):
    backbone = tiny_seq2seq(family)
    task = TaskConfig(kind="generation", max_new_tokens=6)
    ours = PromptModel(backbone, task, "soft-prompt", {"n_tokens": 4, "init": "random"})
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=4)
    theirs = _peft(backbone, config)
    theirs.prompt_encoder.default.embedding.weight[:4] = ours.method.embeddings
    batch = _generation_batch(ours)
    mine = ours.injector.generate(
        ours.prompt(),
        batch["input_ids"],
        batch["attention_mask"],
        max_new_tokens=[6] * len(TEXTS),
        stop_ids=(backbone.spec.eos_token_id,),
    )
    for row, tokens in enumerate(mine):
        out = theirs.generate(
            input_ids=batch["input_ids"][row : row + 1],
            attention_mask=batch["attention_mask"][row : row + 1],
            max_new_tokens=6,
            do_sample=False,
            num_beams=1,
            forced_eos_token_id=None,  # BART's config forces EOS at the length limit
        )
        assert tokens == out[0, 1:].tolist()
    assert [len(t) for t in mine] and all(len(t) <= 6 for t in mine)


@torch.no_grad()
def test_a_row_is_independent_of_padding_and_of_other_rows_prompts(family):
    backbone = tiny_seq2seq(family)
    soft = _model(backbone, words=MULTI)
    prefix = _model(backbone, "prefix-tuning", words=MULTI, n_tokens=2)
    examples = [Example(t, "positive") for t in TEXTS]
    alone = [soft(soft.collate([e])).scores[0] for e in examples]
    together = soft(soft.collate(examples)).scores  # padded to the longest row
    torch.testing.assert_close(together, torch.stack(alone), atol=1e-5, rtol=1e-5)
    batch = soft.collate(examples)
    rows = RowPrompts.per_row([soft.prompt(), prefix.prompt()], [0, 1, 0])
    mixed = soft.task(soft.injector, rows, batch).scores
    prefix_alone = prefix(prefix.collate([examples[1]])).scores[0]
    torch.testing.assert_close(mixed[1], prefix_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[[0, 2]], together[[0, 2]], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_generated_rows_do_not_depend_on_the_batch(family):
    backbone = tiny_seq2seq(family)
    model = PromptModel(backbone, TaskConfig(kind="generation", max_new_tokens=5), "prefix-tuning")
    alone = [model.predict([t])[0]["text"] for t in TEXTS]
    assert [r["text"] for r in model.predict(TEXTS)] == alone


def test_templates_with_slots_and_tagging_are_refused_by_name(family):
    backbone = tiny_seq2seq(family)
    with pytest.raises(ConfigError, match="takes no {p} slots"):
        PromptModel(backbone, TaskConfig(labels=["a", "b"], template="{p:2} {text}"))
    with pytest.raises(ConfigError, match="is an encoder-decoder"):
        PromptModel(backbone, TaskConfig(kind="tagging", labels=["O", "B"]))


def test_a_saved_folder_loads_as_a_seq2seq_backbone(family, tmp_path):
    backbone = tiny_seq2seq(family)
    backbone.model.save_pretrained(tmp_path)
    backbone.tokenizer.save_pretrained(tmp_path)
    loaded = load_backbone(str(tmp_path))
    assert loaded.spec == backbone.spec and loaded.fingerprint == backbone.fingerprint
    ids = torch.tensor([[4, 5, 6, 7]])
    decoder = torch.tensor([[backbone.model.config.decoder_start_token_id, 8]])
    with torch.no_grad():
        a = loaded.model(input_ids=ids, decoder_input_ids=decoder).logits
        b = backbone.model(input_ids=ids, decoder_input_ids=decoder).logits
    assert torch.equal(a, b)


def test_a_path_that_misses_a_head_quirk_is_refused(monkeypatch):
    """The one-off check runs encoder, decoder and head as the injector does against the
    model's own logits: T5 without its d**-0.5 before the tied head is refused."""
    from softprompt.inject import seq2seq

    assert tiny_seq2seq("bart").model.final_logits_bias.abs().sum() > 0  # parity covers it
    monkeypatch.setattr(seq2seq, "_SCALED_TIED_HEAD", frozenset())
    with pytest.raises(BackboneError, match="does not reproduce its own logits"):
        make_injector(tiny_seq2seq("t5", seed=9))


@torch.no_grad()
def test_a_mixed_batch_of_generation_tasks_decodes_each_row_with_its_own_prompt(family):
    backbone = tiny_seq2seq(family)
    task = TaskConfig(kind="generation", max_new_tokens=4)
    models = {
        "soft": PromptModel(backbone, task, "soft-prompt", {"n_tokens": 3, "init": "random"}),
        "prefix": PromptModel(backbone, task, "prefix-tuning", {"n_tokens": 2}),
    }
    for model in models.values():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(4)))
    pairs = [("soft", TEXTS[0]), ("prefix", TEXTS[1]), ("soft", TEXTS[2]), ("prefix", TEXTS[0])]
    mixed = MultiTaskModel(models).predict(pairs)
    alone = [models[name].predict([text])[0]["text"] for name, text in pairs]
    assert [r["text"] for r in mixed] == alone


def test_the_server_refuses_an_encoder_decoder_prompt_by_name(tmp_path):
    from softprompt.serve.engine import Engine
    from softprompt.serve.requests import RefusedTask
    from softprompt.serve.store import PromptStore

    backbone = tiny_seq2seq("t5")
    path = _model(backbone).save(tmp_path / "t5.safetensors")
    engine = Engine(backbone, PromptStore(tmp_path / "store"))
    with pytest.raises(RefusedTask, match="is an encoder-decoder"):
        engine.install("movie", path.read_bytes())


@torch.no_grad()
def test_hidden_states_are_the_encoders_states_of_the_real_tokens(family):
    backbone = tiny_seq2seq(family)
    model = _model(backbone)
    batch = model.collate([Example(t, "positive") for t in TEXTS])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain = model.injector.hidden_states(Prompt(), ids, mask)
    expected = backbone.model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(plain[real], expected[real], atol=1e-5, rtol=1e-5)
    prompted = model.injector.hidden_states(model.prompt(), ids, mask)
    assert prompted.shape == plain.shape and (prompted[real] - plain[real]).abs().max() > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("method", ["soft-prompt", "p-tuning"])
def test_an_exported_adapter_gives_our_logits_in_peft(family, method, tmp_path):
    from softprompt.interop.peft import export_peft

    backbone = tiny_seq2seq(family)
    ours = PromptModel(backbone, TaskConfig(kind="generation"), method, {"n_tokens": 4})
    for p in ours.parameters():
        p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    folder = export_peft(ours, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_2_SEQ_LM" and config["num_virtual_tokens"] == 4
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(backbone.model), folder).eval()
    batch = _generation_batch(ours)
    _assert_logits_match(ours, theirs, batch)


def test_a_seq2seq_prefix_is_not_exported_to_peft(tmp_path):
    from softprompt.interop.peft import PeftAdapterError, export_peft

    model = _model(tiny_seq2seq("t5"), "prefix-tuning")
    with pytest.raises(PeftAdapterError, match="repeated slots"):
        export_peft(model, tmp_path / "adapter")


@torch.no_grad()
def test_several_classification_tasks_train_and_predict_together(family):
    """A mixed batch gives each encoder-decoder task its own pass: every row's scores
    equal its task's alone, and the loss is the sum of the tasks' losses."""
    backbone = tiny_seq2seq(family)
    models = {"words": _model(backbone, words=MULTI), "prefix": _model(backbone, "prefix-tuning")}
    multi = MultiTaskModel(models)
    items = [("words", Example(TEXTS[0], "positive")), ("prefix", Example(TEXTS[1], "negative"))]
    items += [("words", Example(TEXTS[2], "negative"))]
    output = multi(multi.collate(items))
    words = models["words"](models["words"].collate([items[0][1], items[2][1]]))
    prefix = models["prefix"](models["prefix"].collate([items[1][1]]))
    torch.testing.assert_close(output.outputs["words"].scores, words.scores)
    torch.testing.assert_close(output.outputs["prefix"].scores, prefix.scores)
    torch.testing.assert_close(output.loss, words.loss + prefix.loss)
    predicted = multi.predict([(name, e.text) for name, e in items])
    alone = [models[name].predict([e.text])[0]["label"] for name, e in items]
    assert [r["label"] for r in predicted] == alone
