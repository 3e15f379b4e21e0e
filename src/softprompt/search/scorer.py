"""Score many discrete prompts on one batch of labelled examples, sharing what they share.

Search spends nearly all its time here, so candidates are never run one model
call each. A candidate is a template cut at its `{text}` slot into token ids
(`Candidate`). Every row is laid out as in `softprompt.tasks`:

    [BOS] + prefix ids + ids(lead + text)[:max_text_tokens] + suffix ids

and scored exactly as `VerbalizerTask` scores it (label-word logits at the last
token, log-sum-exp per class, cross-entropy over classes), so accuracy and loss
equal `softprompt.evaluate.evaluate` on a `none` prompt with that template. Label
words of several tokens are scored as training scores them (tasks/word_tree.py): the
sum of their tokens' log-probabilities, read by scoring each candidate once more per
word prefix (its tail extended by the word's first tokens), so a multi-word verbalizer
that `train` accepts is searched with the same numbers.

Two layouts, both a three-level tree run through the attention cache:

* candidates differ only after the text (AutoPrompt / RLPrompt triggers, edits of
  a template's tail): each example's [BOS] + prefix + text runs once
  (batch B), and then all candidates' short tails run side by side in that
  example's row, each seeing the text's cached keys/values and its own tokens
  (a visibility mask, as `tasks/word_tree.py` does for label words);
* otherwise (instructions in front, OPRO): the candidates' common leading tokens
  run once, each candidate's own prefix runs once (batch N), and text + tail run
  for every pair. The text's keys/values depend on the instruction before it, so
  the pairs' real tokens are the floor of any exact scorer: batching here saves
  the prefix tokens, not the text's (`benchmarks/search_scoring.py` counts both).
  So that the pairs cost no more than their real tokens, one candidate's pairs are
  packed end to end in rows of `pack_tokens` (as `inject/packing.py` packs
  requests): no padding, and the candidate's prefix keys/values copied once per
  packed row instead of once per example.

Padding sits in the middle of a row (a short candidate prefix before a long
one's text); the mask hides it and explicit positions keep every real token
at the index it has in its own unpadded row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.inject.causal import CausalInjector, broadcast_rows, copy_rows, select_rows
from softprompt.inject.packing import pack_rows
from softprompt.inject.prompt import attention_mask
from softprompt.tasks.template import Template
from softprompt.tasks.verbalizer import Verbalizer

Readout = Callable[[torch.Tensor], torch.Tensor]  # (R, d) answer states -> (R, K) scores


@dataclass(frozen=True)
class Candidate:
    """One discrete prompt at the token level.

    `template` is the human-readable form (saved in prompt files); `prefix` and
    `suffix` are the ids actually scored. They agree when the candidate was made
    with `Candidate.from_template`; trigger methods build ids directly."""

    prefix: tuple[int, ...]
    lead: str  # whitespace the template puts before the text (moves onto the text)
    suffix: tuple[int, ...]
    template: str

    @classmethod
    def from_template(cls, template: str, tokenizer) -> Candidate:
        """Cut a `{text}` template exactly as `softprompt.tasks.template.Template` does."""
        prefix, lead, suffix = Template(template).pieces("")
        ids = lambda s: tuple(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else ()  # noqa: E731
        return cls(prefix=ids(prefix), lead=lead, suffix=ids(suffix), template=template)


@dataclass(frozen=True)
class Score:
    """A candidate's result on the scored examples. Ranked by accuracy, then loss."""

    accuracy: float
    loss: float
    examples: int

    @property
    def key(self) -> tuple[float, float]:
        return (self.accuracy, -self.loss)


@dataclass
class CandidateScorer:
    """Scores candidates on fixed examples; counts every candidate it scores.

    `max_rows` caps (example, candidate) rows per model call and `max_tail_tokens` the
    tail tokens side by side in one row (memory); examples run in length-sorted
    groups of `example_group` (little padding). Front candidates' pairs are packed
    into rows of `pack_tokens`, at most `max_packed_rows` rows per model call."""

    backbone: Backbone
    verbalizer: Verbalizer
    examples: list[Example]
    max_text_tokens: int = 200
    max_rows: int = 256
    max_tail_tokens: int = 256
    example_group: int = 16
    pack_tokens: int = 128
    max_packed_rows: int = 64
    evaluations: int = 0
    _text_ids: dict[tuple[str, str], list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.backbone.spec.kind != "causal-lm":
            raise ConfigError("backbone: discrete prompt search needs a causal LM (verbalizer)")
        if not self.examples:
            raise ConfigError("search: no labelled examples to score candidates on")
        lookup = {label: i for i, label in enumerate(self.verbalizer.labels)}
        self.targets = torch.tensor([lookup[e.label] for e in self.examples])  # (B,)
        self.injector = CausalInjector(self.backbone)  # runs the model; its own LM head
        bos = self.backbone.spec.bos_token_id
        self.bos = () if bos is None else (bos,)
        order = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i].text))
        size = self.example_group
        self.groups = [order[i : i + size] for i in range(0, len(order), size)]

    def body(self, lead: str, text: str) -> list[int]:
        """ids(lead + text) cut to the text budget, cached: the same for every candidate."""
        key = (lead, text)
        if key not in self._text_ids:
            ids = self.backbone.tokenizer(lead + text, add_special_tokens=False)["input_ids"]
            self._text_ids[key] = ids[: self.max_text_tokens]
        return self._text_ids[key]

    # -- public ------------------------------------------------------------
    @torch.no_grad()
    def score(self, candidates: list[Candidate]) -> list[Score]:
        """Accuracy and mean loss of each candidate on the examples (one evaluation each)."""
        if not candidates:
            return []
        self.evaluations += len(candidates)
        scores = self.class_scores(candidates)  # (N, B, C)
        return [self._summary(s) for s in scores]

    @torch.no_grad()
    def class_scores(self, candidates: list[Candidate]) -> torch.Tensor:
        """(N, B, C) class scores of every candidate on every example (not counted).

        Multi-token label words: every candidate runs once per word prefix (its tail
        extended by it), and each word sums the log-probs of its tokens read there."""
        verbalizer = self.verbalizer
        if verbalizer.single_token:
            return self._answers(candidates, self._to_classes, len(verbalizer.labels))
        extended = [replace(c, suffix=c.suffix + p) for c in candidates for p in verbalizer.steps]
        read = lambda hidden: verbalizer.token_log_probs(hidden, self.injector.logits)  # noqa: E731
        scores = self._answers(extended, read, len(verbalizer.tokens))  # (N * P, B, U)
        return verbalizer.word_sums(
            scores.view(len(candidates), len(verbalizer.steps), *scores.shape[1:])
        )

    def _answers(self, candidates: list[Candidate], read: Readout, width: int) -> torch.Tensor:
        """(N, B, width): `read` of every candidate's answer state on every example.

        Candidates that differ only after the text share each length-sorted example
        group's text pass; otherwise they go in chunks of at most
        `max_rows // example_group` candidates, each candidate's own prefix running
        once per chunk and its pairs with every example packed after it."""
        out = torch.empty(len(candidates), len(self.examples), width)
        if self._tails_differ_only(candidates):
            for group in self.groups:
                examples = [self.examples[i] for i in group]
                out[:, torch.tensor(group)] = self._tail_group(candidates, examples, read)
            return out
        size = max(1, self.max_rows // self.example_group)
        for start in range(0, len(candidates), size):
            chunk = candidates[start : start + size]
            out[start : start + len(chunk)] = self._pairs(self._heads(chunk), chunk, read)
        return out

    @staticmethod
    def _tails_differ_only(candidates: list[Candidate]) -> bool:
        """Same prefix and lead everywhere, and a tail to answer in (an empty tail
        answers in the text itself)."""
        first = candidates[0]
        same_front = all(c.prefix == first.prefix and c.lead == first.lead for c in candidates)
        return same_front and all(c.suffix for c in candidates)

    def _tail_group(
        self, candidates: list[Candidate], examples: list[Example], read: Readout
    ) -> torch.Tensor:
        texts = self._texts(candidates[0], examples)  # once for every candidate
        width = max(len(c.suffix) for c in candidates)
        per_row = max(1, self.max_tail_tokens // width)  # tails side by side in one row
        chunks = _chunks(candidates, per_row)
        return torch.cat([self._tails(texts, chunk, len(examples), read) for chunk in chunks])

    def _summary(self, scores: torch.Tensor) -> Score:
        loss = F.cross_entropy(scores, self.targets).item()
        accuracy = (scores.argmax(-1) == self.targets).float().mean().item()
        return Score(accuracy=accuracy, loss=loss, examples=len(self.examples))

    # -- the two layouts -----------------------------------------------------
    def _heads(self, candidates: list[Candidate]) -> _Stage:
        """[BOS] + the candidates' common leading ids once, then each candidate's own
        prefix once: a stage of N rows for `_pairs` to put every example after."""
        common = _common_prefix([c.prefix for c in candidates])
        stem = self._run(None, [list(self.bos) + list(common)])
        return self._run(stem, [list(c.prefix[len(common) :]) for c in candidates])

    def _pairs(self, heads: _Stage, candidates: list[Candidate], read: Readout) -> torch.Tensor:
        """Text + tail of every (candidate, example) pair after its candidate's prefix:
        (N, B, C). One candidate's pairs go end to end in packed rows; a token sees its
        candidate's prefix and the earlier tokens of its own pair, at the positions it
        has in its own unpadded row."""
        n, b = len(candidates), len(self.examples)
        bodies = [[self.body(c.lead, e.text) + list(c.suffix) for e in self.examples]
                  for c in candidates]  # fmt: skip
        rows = [  # (candidate, examples in this row)
            (j, members)
            for j, pairs in enumerate(bodies)
            for members in pack_rows([len(p) for p in pairs], self.pack_tokens)
        ]
        answer = torch.empty(n * b, self.backbone.spec.hidden_size)  # (N * B, d)
        for start in range(0, len(rows), self.max_packed_rows):
            part = rows[start : start + self.max_packed_rows]
            hidden, where = self._packed(heads, bodies, part)
            answer[[j * b + i for j, i in where]] = hidden
        return read(answer).view(n, b, -1)  # (N, B, C)

    def _packed(
        self, heads: _Stage, bodies: list[list[list[int]]], rows: list[tuple[int, list[int]]]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Run packed rows after their candidates' prefixes: -> the answer states (P, d)
        of the pairs they hold, and which (candidate, example) each is."""
        width = max(sum(len(bodies[j][i]) for i in members) for j, members in rows)
        count = len(rows)
        owner = torch.tensor([j for j, _ in rows])  # (R,) candidate of each row
        if heads.lengths.shape[0] == 1:
            owner = torch.zeros_like(owner)  # one shared prefix serves every row
        ids = torch.full((count, width), self.backbone.spec.pad_token_id, dtype=torch.long)
        positions = torch.zeros((count, width), dtype=torch.long)
        sees = torch.eye(width, dtype=torch.bool).repeat(count, 1, 1)  # (R, T, T) padding
        where, last = [], []
        for r, (j, members) in enumerate(rows):
            at, past = 0, int(heads.lengths[owner[r]])
            for i in members:
                pair = bodies[j][i]
                k = len(pair)
                ids[r, at : at + k] = torch.tensor(pair, dtype=torch.long)
                positions[r, at : at + k] = past + torch.arange(k)
                sees[r, at : at + k, at : at + k] = torch.ones(k, k, dtype=torch.bool).tril()
                where.append((j, i))
                last.append((r, at + k - 1))
                at += k
        cache = None
        if heads.cache is not None:
            prefix = heads.mask[owner].bool()  # (R, m) the row's candidate prefix
            sees = torch.cat([prefix[:, None, :].expand(-1, width, -1), sees], dim=-1)
            cache = select_rows(heads.cache, owner, self.injector.config)
        out = self.injector.run_core(
            inputs_embeds=self.injector.embed(ids),  # (R, T, d)
            attention_mask=self._attention_mask(sees.unsqueeze(1)),  # (R, 1, T, m + T)
            position_ids=positions,  # (R, T)
            cache=cache,
            **({} if cache is not None else {"use_cache": False}),
        ).last_hidden_state  # (R, T, d)
        index = torch.tensor(last)  # (P, 2) row, column of each pair's answer token
        return out[index[:, 0], index[:, 1]], where  # (P, d)

    def _texts(self, first: Candidate, examples: list[Example]) -> _Stage:
        """[BOS] + the shared prefix + each example's text, once for all candidates."""
        front = list(self.bos) + list(first.prefix)  # short: one pass with the texts
        return self._run(None, [front + self.body(first.lead, e.text) for e in examples])

    def _tails(
        self, texts: _Stage, candidates: list[Candidate], b: int, read: Readout
    ) -> torch.Tensor:
        """Every candidate's tail after each example's text, side by side in one row: (N, B, C).

        Row e holds tail 1, tail 2, ... after text e's cached keys/values; a visibility
        mask lets each tail see the text and its own earlier tokens only, and gives it
        the positions it has straight after the text (as `tasks/word_tree.py` does for
        label words). The text's cache is used as is: no copy per candidate."""
        n, width = len(candidates), max(len(c.suffix) for c in candidates)
        ids = torch.full((n, width), self.backbone.spec.pad_token_id, dtype=torch.long)
        for i, c in enumerate(candidates):
            ids[i, : len(c.suffix)] = torch.tensor(c.suffix)
        offset = torch.arange(width).repeat(n)  # (N * L,) position inside its tail
        owner = torch.arange(n).repeat_interleave(width)  # (N * L,) candidate of each slot
        sees = (owner[:, None] == owner[None, :]) & (offset[None, :] <= offset[:, None])
        past = texts.mask.bool()  # (B, m) real text tokens
        visible = torch.cat(
            [past[:, None, :].expand(b, n * width, -1), sees.expand(b, -1, -1)], dim=-1
        )  # (B, N * L, m + N * L)
        out = self.injector.run_core(
            inputs_embeds=self.injector.embed(ids.view(1, -1)).expand(b, -1, -1),  # (B, N*L, d)
            attention_mask=self._attention_mask(visible.unsqueeze(1)),
            position_ids=texts.lengths[:, None] + offset,  # (B, N * L)
            cache=copy_rows(texts.cache, b, self.injector.config),
        ).last_hidden_state  # (B, N * L, d)
        last = torch.tensor([i * width + len(c.suffix) - 1 for i, c in enumerate(candidates)])
        answer = out[:, last]  # (B, N, d)
        return read(answer.reshape(b * n, -1)).view(b, n, -1).transpose(0, 1)

    def _attention_mask(self, visible: torch.Tensor) -> torch.Tensor:
        """Bool for SDPA (True = attend), additive float for eager attention."""
        return attention_mask(visible, self.injector.config, self.injector.dtype)

    def _to_classes(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.verbalizer.class_scores(hidden, self.injector.logits)  # (R, C)

    def _run(self, parent: _Stage | None, rows: list[list[int]]) -> _Stage:
        """Run `rows` (right-padded) on top of `parent`'s cache, parent row i serving row i
        (a parent of one row serves them all)."""
        count = len(rows)
        width = max(len(r) for r in rows)
        if width == 0 and parent is not None:
            return parent  # nothing new: the next level repeats the parent itself
        config = self.injector.config
        if parent is None or parent.cache is None:
            cache, mask = DynamicCache(config=config), None
            past = torch.zeros(count, dtype=torch.long)
        else:
            cache = copy_rows(parent.cache, count, config)
            mask = broadcast_rows(parent.mask, count)  # (R, m)
            past = broadcast_rows(parent.lengths, count)  # (R,)
        ids = torch.full((count, width), self.backbone.spec.pad_token_id, dtype=torch.long)
        own = torch.zeros((count, width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            own[i, : len(row)] = 1
        if width == 0:
            return _Stage(None, None, past)
        positions = past[:, None] + torch.arange(width)  # (R, T)
        full_mask = own if mask is None else torch.cat([mask, own], dim=1)  # (R, m + T)
        self.injector.run_core(  # fills `cache`: the next level reads only keys and values
            inputs_embeds=self.injector.embed(ids),  # (R, T, d)
            attention_mask=full_mask,
            position_ids=positions,
            cache=cache,
        )
        return _Stage(cache, full_mask, past + own.sum(1))


@dataclass
class _Stage:
    """What one level of the tree leaves for the next: its cache and mask, real lengths."""

    cache: DynamicCache | None
    mask: torch.Tensor | None  # (R, m) 1 = real token
    lengths: torch.Tensor  # (R,) real tokens so far (the next token's position)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _common_prefix(seqs: list[tuple[int, ...]]) -> tuple[int, ...]:
    first = seqs[0]
    size = len(first)
    for s in seqs[1:]:
        size = min(size, len(s))
        while size and s[:size] != first[:size]:
            size -= 1
    return first[:size]
