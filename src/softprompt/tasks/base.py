"""The task interface and its config; concrete tasks register by name.

A task turns examples into token ids (`collate`) and the frozen model's hidden states
at those ids into a loss and scores (`score`). Keeping the two apart is what lets rows
of several tasks share one forward pass (tasks/mixed.py): the model runs once over the
merged rows and each task scores its own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone
from softprompt.data import Example
from softprompt.errors import ConfigError
from softprompt.inject import Injector, Prompt, RowPrompts
from softprompt.registry import Registry
from softprompt.tasks.chat import Conversation, check_chat_template, cut_text, render


@dataclass
class TaskConfig:
    """How a dataset is framed for the frozen model.

    `head`: "verbalizer" scores label words with the LM head (causal LMs, and the
    decoder of an encoder-decoder), "linear" trains a small classifier on pooled states;
    "auto" picks verbalizer for causal LMs and encoder-decoders, linear for encoders. `verbalizer` maps each label to its
    label words (default: " " + label name). `chat_template`: the input is rendered as a
    conversation by the backbone tokenizer's chat template and that fills `{text}`
    (tasks/chat.py); for instruct backbones. `chat_system`: a system message put before
    the user's (the instruction an instruct model reads), with `chat_template` only.
    """

    kind: str = "classification"
    labels: list[str] = field(default_factory=list)
    template: str = "{text}"
    verbalizer: dict[str, list[str]] | None = None
    head: str = "auto"
    pool: str = "auto"
    max_text_tokens: int = 200
    max_new_tokens: int = 32
    image_size: int = 112  # vision backbones: images are resized to this square (tasks/image.py)
    chat_template: bool = False
    chat_system: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("classification", "generation", "tagging"):
            raise ConfigError(
                f"task.kind: must be classification, generation or tagging, got {self.kind!r}"
            )
        if self.head not in ("auto", "verbalizer", "linear"):
            raise ConfigError(f"task.head: must be auto, verbalizer or linear, got {self.head!r}")
        if self.pool not in ("auto", "mean", "cls", "last"):
            raise ConfigError(f"task.pool: must be auto, mean, cls or last, got {self.pool!r}")
        if not isinstance(self.chat_template, bool):
            raise ConfigError(
                f"task.chat_template: must be true or false, got {self.chat_template!r}"
            )
        if self.chat_system is not None and not isinstance(self.chat_system, str):
            raise ConfigError(f"task.chat_system: must be a string, got {self.chat_system!r}")
        if self.chat_system is not None and not self.chat_template:
            raise ConfigError(
                "task.chat_system: a system message needs task.chat_template: true "
                "(--chat-template)"
            )
        if self.chat_template and self.kind == "tagging":
            raise ConfigError(
                "task.chat_template: tagging labels each word of the bare text; "
                "leave task.chat_template out"
            )
        if self.kind != "generation" and len(self.labels) < 2:
            raise ConfigError(f"task.labels: need at least 2 labels, got {self.labels!r}")
        if isinstance(self.verbalizer, str):
            raise ConfigError(
                f"task.verbalizer: {self.verbalizer!r} chooses words from a dataset when a "
                "run builds its model (model.build_model); here give the words themselves, "
                'e.g. {"label": [" word"]}'
            )
        if self.verbalizer is not None:
            self.verbalizer = {
                k: [v] if isinstance(v, str) else list(v) for k, v in self.verbalizer.items()
            }
            missing = [label for label in self.labels if label not in self.verbalizer]
            extra = [key for key in self.verbalizer if key not in self.labels]
            if missing or extra:
                raise ConfigError(
                    f"task.verbalizer: must give words for exactly the labels {self.labels}; "
                    f"missing {missing}, unknown {extra}"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskOutput:
    loss: torch.Tensor  # () mean over rows (over target tokens for generation)
    scores: torch.Tensor | None = None  # (B, C) class scores, classification only
    targets: torch.Tensor | None = None  # (B,) class index

    def counts(self) -> tuple[float, float]:
        """(correct, scored) for a training accuracy, over rows (or tagged tokens; targets
        of -100 are not scored); (0, 0) when nothing is classified."""
        if self.scores is None or self.targets is None:
            return 0.0, 0.0
        scored = self.targets != -100
        right = (self.scores.argmax(-1) == self.targets) & scored
        return float(right.sum()), float(scored.sum())


class Task(nn.Module):
    """Turns examples into tensors and hidden states into a loss and scores."""

    config: TaskConfig
    generates = False  # whether predictions are decoded text (rather than scores)
    # whether `score` takes hidden states of a merged pass over several tasks' rows; a
    # task that runs the model its own way (an encoder-decoder's) gets a pass of its own
    merges_rows = True

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """Examples -> `input_ids` (B, T), `attention_mask` (B, T) or (B, T, T) with
        `positions` (B, T), plus whatever `score` needs; `targets` when labels are known."""
        raise NotImplementedError

    def score(
        self, injector: Injector, hidden: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        """(B, T, d) hidden states at the batch's tokens -> loss and scores."""
        raise NotImplementedError

    def forward(
        self, injector: Injector, prompts: Prompt | RowPrompts, batch: dict[str, torch.Tensor]
    ) -> TaskOutput:
        hidden = injector.hidden_states(
            prompts,
            batch["input_ids"],
            batch["attention_mask"],
            batch.get("positions"),
            batch.get("inline_index"),
        )  # (B, T, d)
        return self.score(injector, hidden, batch)

    def frame(self, prompt: Prompt, injector: Injector) -> Prompt:
        """The method's prompt as this task places it (template slots); as is by default."""
        return prompt

    def label_token_ids(self) -> list[list[int]]:
        """Token ids of each label's first label word, for the `labels` prompt init."""
        return []

    def use_label_embeddings(self, rows) -> None:
        """Score classes against label-token rows a method learns (DART); only a task
        that scores label words can."""
        raise ConfigError(
            "method: this method learns label tokens, which needs label words "
            "(task.head verbalizer on a causal LM)"
        )

    def zero_counts(self) -> list[float]:
        """`metric_counts` of nothing: every process sends a vector of this length."""
        return []

    def metric_counts(self, output: TaskOutput) -> list[float]:
        """Counts (summable over batches and processes) that `metrics` turns into figures."""
        return []

    def metrics(self, counts: list[float], rows: float) -> dict[str, float]:
        return {}

    def predict(
        self, injector: Injector, prompts: Prompt | RowPrompts, examples: list[Example]
    ) -> list[dict[str, Any]]:
        return self.describe(self.forward(injector, prompts, self.collate(examples)), None)

    def describe(
        self, output: TaskOutput, batch: dict[str, torch.Tensor] | None
    ) -> list[dict[str, Any]]:
        """One prediction record per row of a scored batch (see `predict`)."""
        raise NotImplementedError


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists: -> ids (B, T), mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


class TemplatedTask(Task):
    """Shared set-up of tasks that fill a template and tokenize it."""

    def __init__(self, config: TaskConfig, backbone: Backbone) -> None:
        from softprompt.tasks.template import Template

        super().__init__()
        self.config = config
        self.tokenizer = backbone.tokenizer
        self.pad_id = backbone.spec.pad_token_id
        if config.chat_template:
            check_chat_template(self.tokenizer, backbone.spec.kind, backbone.name)
        self.drop_bos = backbone.spec.bos_token_id is not None  # rows get BOS in front
        self.template = Template(config.template)
        # with virtual-token slots, a decoder runs everything before {text} once per step
        # as the prompt prefix (it never sees the input); an encoder keeps it in each row
        self.head_in_front = self.template.has_slots and backbone.spec.kind == "causal-lm"

    def contexts(self, examples: list[Example]) -> list[list[int]]:
        """Filled-template token ids per example, text cut to `max_text_tokens`."""
        return self.rows(examples)[0]

    def rows(self, examples: list[Example]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids per example and, per id, its virtual-token index (-1: a real token)."""
        include = not self.head_in_front
        encoded = [
            self.template.encode_row(
                self.tokenizer, *self._framed_text(e.text), include_head=include
            )
            for e in examples
        ]
        return [ids for ids, _ in encoded], [virtual for _, virtual in encoded]

    def conversation(self, messages: list[dict[str, str]]) -> Conversation:
        """`messages` rendered by the chat template as this task frames them (a served chat
        request's input, for a `chat_template` task); the task's `chat_system` goes first
        unless the messages bring their own system message."""
        system = self.config.chat_system
        if system is not None and not any(m["role"] in ("system", "developer") for m in messages):
            messages = [{"role": "system", "content": system}, *messages]
        return render(self.tokenizer, messages, drop_bos=self.drop_bos)

    def chat_tokens(self, text: str) -> int:
        """How many tokens the chat template (with `chat_system`) adds around a plain
        `text`: 0 without `chat_template`. The position check names them apart, since
        a user who sees only "template and text tokens" looks for the excess in the
        wrong place."""
        if not self.config.chat_template:
            return 0
        framed, _ = self._framed_text(text)
        bare = cut_text(self.tokenizer, text, self.config.max_text_tokens)
        count = len(self.tokenizer(framed, add_special_tokens=False)["input_ids"])
        return count - len(self.tokenizer(bare, add_special_tokens=False)["input_ids"])

    def _framed_text(self, text: str) -> tuple[str, int]:
        """What fills `{text}` and its token budget (`Template.encode_row`). A chat-template
        task renders a plain text (cut first) as one user message, whose framing is never
        cut; a served `Conversation` keeps its last `max_text_tokens` tokens."""
        budget = self.config.max_text_tokens
        if not self.config.chat_template:
            return text, budget
        if isinstance(text, Conversation):
            return text, -budget
        text = cut_text(self.tokenizer, text, budget)
        return self.conversation([{"role": "user", "content": text}]), 1 << 30

    def with_slots(
        self, batch: dict[str, torch.Tensor], examples: list[Example], offset: int = 0
    ) -> dict[str, torch.Tensor]:
        """Add `inline_index` (B, T) for a right-padded batch whose rows start at `offset`."""
        if not self.template.has_slots:
            return batch
        index = torch.full(batch["input_ids"].shape, -1, dtype=torch.long)
        for row, virtual in enumerate(self.rows(examples)[1]):
            index[row, offset : offset + len(virtual)] = torch.tensor(virtual, dtype=torch.long)
        batch["inline_index"] = index
        return batch

    def frame(self, prompt: Prompt, injector: Injector) -> Prompt:
        """Place the method's n virtual tokens in the template's slots.

        On a decoder the head (the slots and text before {text}) becomes the front
        prompt, computed once per step; slots after {text} are filled inside each row.
        On an encoder every slot is filled inside the row."""
        if not self.template.has_slots:
            return prompt
        need = self.template.n_virtual
        if prompt.kv is not None or prompt.n_embeds != need:
            got = "a key/value prefix" if prompt.kv is not None else f"{prompt.n_embeds} tokens"
            raise ConfigError(
                f"task.template: its slots hold {need} virtual tokens but the method gives "
                f"{got}; set method.n_tokens to {need} with soft-prompt or p-tuning"
            )
        virtual = prompt.embeds  # (n, d)
        if not self.head_in_front:
            return Prompt(inline=virtual)
        head, _ = self.template.head_and_glue()
        parts = []
        for kind, value in head:
            if kind == "slot":
                first = int(value)
                parts.append(virtual[first : first + self.template._size_of(first)])  # (k, d)
            else:
                ids, _ = self.template.encode_pieces(self.tokenizer, [(kind, value)])
                if ids:
                    tokens = torch.tensor(ids, device=injector.device)
                    parts.append(injector.embed(tokens).to(virtual.dtype))  # (t, d)
        if not parts:  # every slot after {text} ("{text} {p:2}"): nothing goes in front
            return Prompt(inline=virtual)
        return Prompt(embeds=torch.cat(parts), inline=virtual)  # (m, d)

    def with_targets(
        self, batch: dict[str, torch.Tensor], examples: list[Example]
    ) -> dict[str, torch.Tensor]:
        """Add class indices when every example carries a known label (not at predict time)."""
        if all(e.label in self.config.labels for e in examples):
            batch["targets"] = label_index(self.config.labels, examples)
        return batch


def continuation_batch(
    contexts: list[list[int]], continuations: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Rows `context + continuation[:-1]`, scored at the continuation's tokens.

    Token j of a continuation is predicted by the hidden state just before it,
    at position len(context) - 1 + j; only those positions get logits."""
    rows = [c + t[:-1] for c, t in zip(contexts, continuations, strict=True)]
    positions = [
        [len(c) - 1 + j for j in range(len(t))]
        for c, t in zip(contexts, continuations, strict=True)
    ]
    ids, mask = pad_right(rows, pad_id)
    pos, score_mask = pad_right(positions, 0)
    tok, _ = pad_right(continuations, 0)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "score_positions": pos,
        "score_tokens": tok,
        "score_mask": score_mask,
    }


def continuation_log_probs(
    hidden: torch.Tensor, batch: dict[str, torch.Tensor], injector: Injector
) -> torch.Tensor:
    """(R, T, d) hidden states -> (R, K) log-probs of each continuation token, 0 at padding."""
    positions = batch["score_positions"]  # (R, K)
    picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # (R, K, d)
    log_probs = injector.logits(picked).float().log_softmax(-1)  # (R, K, V)
    token_lp = log_probs.gather(-1, batch["score_tokens"].unsqueeze(-1)).squeeze(-1)  # (R, K)
    return token_lp * batch["score_mask"]


def label_index(labels: list[str], examples: list[Example]) -> torch.Tensor:
    lookup = {label: i for i, label in enumerate(labels)}
    unknown = [e.label for e in examples if e.label not in lookup]
    if unknown:
        raise ConfigError(f"task.labels: label {unknown[0]!r} is not one of {labels}")
    return torch.tensor([lookup[e.label] for e in examples], dtype=torch.long)  # (B,)


TASKS: Registry[Task] = Registry("task", "task", package="softprompt.tasks")


def register_task(name: str):
    """Class decorator: tasks share `TaskConfig`; `task_name` picks one for a config."""
    return TASKS.register(name, TaskConfig)


def task_name(config: TaskConfig, backbone: Backbone) -> str:
    """Which registered task frames `config` on this backbone."""
    causal = backbone.spec.kind == "causal-lm"
    if backbone.spec.kind == "vision":  # images: a head over the ViT's states (tasks/image.py)
        return "image"
    if backbone.spec.kind == "seq2seq-lm":  # the decoder scores and generates (tasks/seq2seq.py)
        return _seq2seq_task_name(config, backbone)
    if config.kind == "tagging":  # a token-level head, on decoders and encoders alike
        return "tagging"
    if config.kind == "generation":
        if not causal:
            raise ConfigError(
                f"task.kind: generation needs a causal LM; {backbone.name} is an {backbone.spec.kind}"
            )
        return "generation"
    if config.head == "linear" or (config.head == "auto" and not causal):
        return "linear"
    if not causal:
        raise ConfigError(
            f"task.head: verbalizers need a causal LM; {backbone.name} is an "
            f"{backbone.spec.kind} (try task.head: linear)"
        )
    return "verbalizer"


def _seq2seq_task_name(config: TaskConfig, backbone: Backbone) -> str:
    """An encoder-decoder classifies by label words on its decoder, or generates."""
    if config.kind == "tagging" or config.head == "linear":
        what = "tagging" if config.kind == "tagging" else "task.head: linear"
        raise ConfigError(
            f"{what}: {backbone.name} is an encoder-decoder; it classifies by label words on "
            "its decoder (task.head: verbalizer) or generates (task.kind: generation)"
        )
    return "seq2seq-generation" if config.kind == "generation" else "seq2seq-verbalizer"
