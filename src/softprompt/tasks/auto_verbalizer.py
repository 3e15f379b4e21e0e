"""Automatic label words (Gao et al. 2021, LM-BFF, arXiv:2012.15723; Schick et al. 2020,
PETAL, arXiv:2010.13641): `task.verbalizer: auto` (or `auto:N`, N words per class).

Label names that are codes ("comp.sys.mac.hardware", "T3") or long phrases are poor
label words: the frozen LM never says them after the template, so every prompt has to
fight the verbalizer. This picks words the LM already uses to tell the classes apart,
from the training rows (the K shots in the k-shot regime), before any model is built,
so it works with every method:

1. one pass of the frozen model over the rows with the task's template and no prompt
   (the zero-shot `none` method's path: the task's collation and scoring, through the
   injector; `{p}` slots left out, as no prompt exists yet), giving log p(token | row) at the answer position for the whole vocabulary;
2. per class, the `pool` tokens most likely over that class's rows (LM-BFF's candidate
   step) that decode to a word and tokenize back to themselves, ranked by the log
   likelihood ratio: mean log-prob over the class's rows minus over the others' (PETAL);
   the task's own label words join as candidates, multi-token ones scored exactly as
   the verbalizer scores them (tasks/word_tree.py);
3. one word per class by coordinate ascent on the rows' accuracy (ties: mean log-prob
   of the gold class), each class starting from its best ratio, words never shared;
   with validation rows, whichever of that and the plain best ratios fits them better;
   with auto:N, each class then adds its next N - 1 words by ratio;
4. the choice is checked on the validation rows (the K-per-class validation set in
   the k-shot regime): unless it beats the task's own words there, they are kept.

The result is an ordinary verbalizer, written into the task config (and so into the
prompt file); `AutoWords.table()` prints the candidates with their scores.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from softprompt.backbones import Backbone
from softprompt.data import Dataset, Example
from softprompt.errors import ConfigError
from softprompt.inject import Injector, Prompt, make_injector
from softprompt.tasks.base import TaskConfig, task_name
from softprompt.tasks.classification import VerbalizerTask
from softprompt.tasks.presets import task_config_for
from softprompt.tasks.template import VIRTUAL, Template

AUTO = re.compile(r"auto(?::(\d+))?")
MAX_WORDS = 16  # words per class; the verbalizer's log-sum-exp gains nothing past a few
ROWS_PER_CLASS = 32  # the search reads at most this many rows per class (seeded)
POOL = 100  # LM-BFF's candidate step: the most likely tokens per class
SHORTLIST = 10  # candidates per class the assignment search tries


def parse_auto(value: Any) -> int | None:
    """`auto` -> 1, `auto:N` -> N words per class; None when `value` is not an auto
    spec (a dict of words, or None); a ConfigError for a malformed string."""
    if not isinstance(value, str):
        return None
    match = AUTO.fullmatch(value.strip())
    words = int(match.group(1) or 1) if match else 0
    if not 1 <= words <= MAX_WORDS:
        raise ConfigError(
            f"task.verbalizer: {value!r} is not a word mapping or auto / auto:N with "
            f'1 <= N <= {MAX_WORDS}; give JSON like {{"label": [" word"]}} or auto'
        )
    return words


@dataclass
class Candidate:
    """One possible label word of a class and how it scores on the rows."""

    word: str
    scores: torch.Tensor  # (N,) log-prob of the word after each row
    ratio: float = 0.0  # mean log-prob over the class's rows minus over the other rows
    likelihood: float = 0.0  # mean log-prob over the class's rows


@dataclass
class AutoWords:
    """The chosen verbalizer, the candidates behind it and the rows' accuracy with it."""

    verbalizer: dict[str, list[str]]
    candidates: dict[str, list[Candidate]] = field(default_factory=dict)
    accuracy: float = 0.0  # on the rows searched, chosen words
    manual_accuracy: float = 0.0  # on the same rows, the task's own label words
    rows: int = 0
    held_out: int = 0  # validation rows the choice was checked on
    checked: tuple[float, float] = (0.0, 0.0)  # there: chosen words' (accuracy, gold lp)
    manual_checked: tuple[float, float] = (0.0, 0.0)  # there: the task's own words'
    kept_own: bool = False  # the own words did as well on the held-out rows

    def table(self) -> str:
        """The candidates per class with their scores; chosen words are starred."""
        lines = [
            f"label words chosen on {self.rows} training rows: accuracy {self.accuracy:.3f} "
            f"(the task's own words: {self.manual_accuracy:.3f})",
        ]
        if self.held_out:
            verdict = "keeping the task's own words" if self.kept_own else "using the chosen words"
            lines.append(
                f"on {self.held_out} validation rows: accuracy {self.checked[0]:.3f} (own words: "
                f"{self.manual_checked[0]:.3f}); {verdict}"
            )
        lines.append(f"  {'label':<24} {'word':<18} {'ratio':>8} {'log-prob':>9}")
        for label, found in self.candidates.items():
            chosen = set(self.verbalizer[label])
            for cand in found:
                star = "*" if cand.word in chosen else " "
                lines.append(
                    f"{star} {label[:24]:<24} {cand.word!r:<18} {cand.ratio:>8.3f} "
                    f"{cand.likelihood:>9.3f}"
                )
        return "\n".join(lines)


def searched_rows(rows: Sequence[Example], labels: Sequence[str], seed: int = 0) -> list[Example]:
    """At most ROWS_PER_CLASS rows of each class (seeded): enough to rank words, and a
    full training split of thousands of rows would cost as much as an epoch."""
    picked: list[Example] = []
    for label in labels:
        mine = [e for e in rows if e.label == label]
        random.Random(f"auto-words:{seed}:{label}").shuffle(mine)
        picked += mine[:ROWS_PER_CLASS]
    return picked


@torch.no_grad()
def answer_log_probs(
    task: VerbalizerTask, injector: Injector, rows: Sequence[Example], batch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (N, V) log-probs of every token at the answer position, and (N, W) log-probs
    of the task's own label words (multi-token words as whole sequences)."""
    vocab, own = [], []
    for start in range(0, len(rows), batch_size):
        batch = task.collate(list(rows[start : start + batch_size]))
        batch = {k: v.to(injector.device) for k, v in batch.items()}
        hidden = injector.hidden_states(
            Prompt(),
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("positions"),
            batch.get("inline_index"),
        )  # (B, T, d)
        index = torch.arange(hidden.shape[0], device=hidden.device)
        log_probs = injector.logits(hidden[index, batch["answer_index"]]).log_softmax(-1)
        vocab.append(log_probs.float().cpu())  # (B, V)
        if task.single_token:
            own.append(vocab[-1][:, task.first_tokens])  # (B, W)
        else:
            own.append(task.tree.log_probs(hidden, batch["answer_index"], injector).float().cpu())
    return torch.cat(vocab), torch.cat(own)


def _is_word(tokenizer, token_id: int) -> str | None:
    """The token as a label word when it decodes to letters and tokenizes back to itself."""
    word = tokenizer.decode([token_id])
    if not re.search(r"[^\W\d_]{2,}", word) or word != word.rstrip():
        return None
    back = tokenizer(word, add_special_tokens=False)["input_ids"]
    return word if back == [token_id] else None


def _scored(word: str, scores: torch.Tensor, mine: torch.Tensor, others: torch.Tensor):
    """A candidate with its ratio and likelihood: `mine` are its class's rows."""
    inside = float(scores[mine].mean())
    outside = float(scores[others].mean()) if bool(others.any()) else 0.0
    return Candidate(word=word, scores=scores, ratio=inside - outside, likelihood=inside)


def candidates(
    task: VerbalizerTask,
    vocab: torch.Tensor,
    own: torch.Tensor,
    targets: torch.Tensor,
    *,
    pool: int = POOL,
    shortlist: int = SHORTLIST,
) -> dict[str, list[Candidate]]:
    """Per class: its best `shortlist` words by likelihood ratio, from the `pool` tokens
    most likely over its rows plus the task's own label words. vocab (N, V), own (N, W);
    rows whose target is -1 (held out) count for neither."""
    found: dict[str, list[Candidate]] = {}
    column = 0
    for c, label in enumerate(task.config.labels):
        mine = targets == c  # (N,)
        others = (targets >= 0) & ~mine
        likely = vocab[mine].mean(0).topk(min(pool, vocab.shape[1])).indices  # (pool,)
        cands = {}
        for token in likely.tolist():
            word = _is_word(task.tokenizer, token)
            if word is not None:
                cands[word] = _scored(word, vocab[:, token], mine, others)
        for word in task.words[c]:
            cands[word] = _scored(word, own[:, column], mine, others)
            column += 1
        ranked = sorted(cands.values(), key=lambda k: (-k.ratio, k.word))
        found[label] = ranked[:shortlist]
    return found


def _fit(words: list[Candidate], targets: torch.Tensor) -> tuple[float, float]:
    """(accuracy, mean gold log-softmax) of one word per class on the rows whose target
    is not -1."""
    scored = targets >= 0
    scores = torch.stack([w.scores for w in words], dim=-1)[scored]  # (n, C)
    targets = targets[scored]
    accuracy = float((scores.argmax(-1) == targets).float().mean())
    gold = scores.log_softmax(-1).gather(1, targets[:, None]).mean()
    return accuracy, float(gold)


def best_ratios(found: dict[str, list[Candidate]]) -> list[Candidate]:
    """Each class's best-ratio word not already taken by an earlier class."""
    chosen: list[Candidate] = []
    for label in found:
        taken = {c.word for c in chosen}
        free = [c for c in found[label] if c.word not in taken]
        if not free:  # many similar classes (20 newsgroups) can exhaust a short list
            words = ", ".join(repr(c.word) for c in found[label])
            raise ConfigError(
                f"task.verbalizer auto: every candidate word of {label!r} ({words}) is "
                "already another class's word; give that class's words by hand "
                '(task.verbalizer {"label": [" word"]})'
            )
        chosen.append(free[0])
    return chosen


def assign(found: dict[str, list[Candidate]], targets: torch.Tensor, sweeps: int = 3):
    """One distinct word per class: coordinate ascent on the rows' fit, starting from
    each class's best ratio. Returns the chosen candidate per class, in label order."""
    labels = list(found)
    chosen = best_ratios(found)
    best = _fit(chosen, targets)
    for _ in range(sweeps):
        changed = False
        for i, label in enumerate(labels):
            taken = {c.word for j, c in enumerate(chosen) if j != i}
            for cand in found[label]:
                if cand.word in taken or cand is chosen[i]:
                    continue
                trial = chosen[:i] + [cand] + chosen[i + 1 :]
                fit = _fit(trial, targets)
                if fit > best:
                    chosen, best, changed = trial, fit, True
        if not changed:
            break
    return chosen


def choose_words(
    task: VerbalizerTask,
    injector: Injector,
    rows: Sequence[Example],
    words: int = 1,
    held_out: Sequence[Example] = (),
) -> AutoWords:
    """Label words for `task`'s classes from `rows` (every class needs a row). With
    `held_out` rows (the k-shot validation set), the chosen words must beat the task's
    own words there (accuracy, then mean gold log-prob), or the own words are kept: on
    a few dozen rows the search can fit noise (a rare subword that happens to split
    32 rows), and the validation rows are what the run trusts to tell."""
    labels = task.config.labels
    missing = [label for label in labels if not any(e.label == label for e in rows)]
    if missing:
        raise ConfigError(
            f"task.verbalizer auto: no training rows for label(s) {missing}; the words are "
            "chosen from each class's rows, so give every class at least one"
        )
    vocab, own = answer_log_probs(task, injector, [*rows, *held_out])
    gold = torch.tensor([labels.index(e.label) for e in [*rows, *held_out]])  # (N + H,)
    fitted = torch.arange(len(gold)) < len(rows)  # the rows the words are chosen on
    targets, checked = gold.where(fitted, -1), gold.where(~fitted, -1)
    found = candidates(task, vocab, own, targets)
    if any(not found[label] for label in labels) or len(
        {c.word for cs in found.values() for c in cs}
    ) < len(labels):
        raise ConfigError("task.verbalizer auto: too few candidate words to give each class one")
    first = first_words(found, targets, checked if held_out else None)
    picked = with_more_words(found, first, words)  # class -> its words
    verbalizer = {label: [c.word for c in cs] for label, cs in zip(labels, picked, strict=True)}
    chosen = [_as_class(cands) for cands in picked]
    own_scores = task._class_scores(own)  # (N, C): the task's own words, as it scores them
    manual = [Candidate(" / ".join(ws), own_scores[:, c]) for c, ws in enumerate(task.words)]
    result = AutoWords(verbalizer, found, _fit(chosen, targets)[0], _fit(manual, targets)[0])
    result.rows, result.held_out = len(rows), len(held_out)
    if held_out:
        result.checked, result.manual_checked = _fit(chosen, checked), _fit(manual, checked)
        if result.manual_checked >= result.checked:
            result.verbalizer = dict(zip(labels, task.words, strict=True))
            result.kept_own = True
    return result


def first_words(
    found: dict[str, list[Candidate]], targets: torch.Tensor, checked: torch.Tensor | None
) -> list[Candidate]:
    """One word per class: the coordinate ascent's, or, when held-out rows are given
    (`checked`: their targets, -1 elsewhere), whichever of it and the plain best ratios
    fits them better: the ascent can fit the noise of a few dozen rows."""
    ascended = assign(found, targets)
    if checked is None:
        return ascended
    options = [ascended, best_ratios(found)]
    return max(options, key=lambda o: (_fit(o, checked), _fit(o, targets)))


def with_more_words(
    found: dict[str, list[Candidate]], chosen: list[Candidate], words: int
) -> list[list[Candidate]]:
    """auto:N: each class's chosen word, then its next N - 1 by ratio, never a word of
    another class."""
    taken = {c.word for c in chosen}
    picked = [[c] for c in chosen]
    for mine, label in zip(picked, found, strict=True):
        for cand in found[label]:
            if len(mine) >= words:
                break
            if cand.word not in taken:
                mine.append(cand)
                taken.add(cand.word)
    return picked


def _as_class(cands: list[Candidate]) -> Candidate:
    """A class's words scored together, as the verbalizer does: log-sum-exp."""
    scores = torch.stack([c.scores for c in cands]).logsumexp(0)  # (N,)
    return Candidate(" / ".join(c.word for c in cands), scores)


_CHOSEN: dict[tuple, AutoWords] = {}  # one search per (backbone, rows, framing) a process


def resolve_verbalizer(
    backbone: Backbone, dataset: Dataset, task: dict[str, Any], *, echo=print
) -> dict[str, Any]:
    """The user's task overrides with `verbalizer: auto[:N]` replaced by chosen words
    (searched on `dataset.train`); other overrides come back unchanged."""
    words = parse_auto(task.get("verbalizer"))
    if words is None:
        return task
    framing = {k: v for k, v in task.items() if k != "verbalizer"}
    config = task_config_for(dataset, framing)  # the built-in or manual words as candidates
    if config.kind != "classification" or task_name(config, backbone) != "verbalizer":
        return framing  # a linear head (an encoder's, a probe's) reads no label words
    if Template(config.template).has_slots:
        config = dataclasses.replace(config, template=without_slots(config.template))
    rows = searched_rows(dataset.train, config.labels)
    held_out = searched_rows(dataset.validation, config.labels)
    key = (backbone.fingerprint, tuple(rows), tuple(held_out), config.template, words)
    key += (tuple(config.labels), str(config.verbalizer))
    if key not in _CHOSEN:
        result = search_words(backbone, config, rows, words, held_out)
        echo(result.table())
        _CHOSEN[key] = result
    return dict(framing, verbalizer=_CHOSEN[key].verbalizer)


def without_slots(template: str) -> str:
    """The template's literal text: no prompt exists yet when words are chosen, so they
    are the words the manual part of the template asks for."""
    return re.sub(r"[ \t]{2,}", " ", VIRTUAL.sub(" ", template)).strip(" ")


def search_words(
    backbone: Backbone, config: TaskConfig, rows: list[Example], words: int, held_out
) -> AutoWords:
    """`choose_words` for a task config on a backbone, with no prompt."""
    task = VerbalizerTask(config, backbone)
    injector = make_injector(backbone)
    return choose_words(task, injector, rows, words, held_out)
