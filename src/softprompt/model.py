"""A frozen backbone + prompt methods + tasks, as trainable modules.

`PromptModel` is one (method, task) pair: the unit a prompt file holds. `MultiTaskModel`
puts several of them on one backbone and runs a batch whose rows belong to different
tasks (and so use different prompts) in one forward pass.

The backbone is held as a plain attribute, not a submodule: `parameters()`,
`state_dict()` and DDP see only what trains (the prompts and any task heads),
so saving, syncing and counting parameters cannot touch the frozen weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from softprompt.backbones import Backbone, load_backbone
from softprompt.data import Dataset, Example
from softprompt.device import to_device
from softprompt.errors import ConfigError, PromptFileError
from softprompt.inject import Prompt, RowPrompts, make_injector
from softprompt.methods import (
    MethodContext,
    available_methods,
    build_method,
    method_config_class,
    transfer_embeddings,
)
from softprompt.promptfile import check_backbone, malformed, read_prompt_file, save_prompt_file
from softprompt.tasks import TaskConfig, TaskOutput, build_task
from softprompt.tasks.auto_verbalizer import resolve_verbalizer
from softprompt.tasks.base import TemplatedTask
from softprompt.tasks.mixed import TaskModules, merge
from softprompt.tasks.presets import task_config_for
from softprompt.validate import check_fields, check_positions, position_limit


class PromptModel(nn.Module):
    """One prompt method and one task on a frozen backbone."""

    def __init__(
        self,
        backbone: Backbone,
        task_config: TaskConfig,
        method: str = "soft-prompt",
        method_options: dict[str, Any] | None = None,
        shared: dict[str, nn.Module] | None = None,
    ) -> None:
        """`shared` lets the methods of several tasks hold one module (built by the first)."""
        super().__init__()
        object.__setattr__(self, "backbone", backbone)
        object.__setattr__(self, "injector", make_injector(backbone))
        self.task = build_task(task_config, backbone)
        self.method_name = method
        self.method_options = dict(method_options or {})
        context = MethodContext(
            backbone=backbone,
            injector=self.injector,
            label_token_ids=self.task.label_token_ids(),
            shared=shared,
            file_embeddings=lambda path: prompt_embeddings(path, backbone),
        )
        self.method = build_method(method, self.method_options, context)
        labels = getattr(self.method, "label_embeddings", None)  # learned label tokens (DART)
        if labels is not None:
            self.task.use_label_embeddings(labels)
        self.to(self.device)
        with torch.no_grad():  # a template whose slots the method cannot fill fails here
            self._check_positions(self.prompt())

    @property
    def device(self) -> torch.device:
        return self.injector.device

    def _check_positions(self, prompt: Prompt) -> None:
        """A backbone with learned positions (BERT: 512) fails mid-training with an
        IndexError once a row is longer; check the prompt plus the longest row the
        task can build (its text cut to max_text_tokens) before any training."""
        limit = position_limit(self.backbone.model)
        if limit is None or not isinstance(self.task, TemplatedTask):
            return
        config, causal = self.task.config, self.backbone.spec.kind == "causal-lm"
        words = min(config.max_text_tokens, limit + 1)  # at least one token per word
        label = config.labels[0] if config.labels else ""
        text = " ".join(["a"] * words)
        row = self.task.collate([Example(text=text, label=label)])
        chat = self.task.chat_tokens(text)  # counted in the row; named apart
        front = int(causal and self.backbone.spec.bos_token_id is not None)
        generated = config.max_new_tokens if getattr(self.task, "generates", False) else 0
        cut = f"text cut to task.max_text_tokens={config.max_text_tokens}"
        parts = {
            "prompt positions": prompt.n_embeds + (prompt.n_kv if causal else 0) + front,
            f"template and text tokens ({cut})": row["input_ids"].shape[1] - chat,
            "chat-template tokens (task.chat_template, task.chat_system)": chat,
            "generated tokens (task.max_new_tokens)": generated,
        }
        check_positions(self.backbone.name, limit, parts, chat=config.chat_template)

    def prompt(self) -> Prompt:
        """This model's prompt as its task places it, computed once for all rows using it."""
        return self.task.frame(self.method(), self.injector)

    def forward(self, batch: dict[str, torch.Tensor]) -> TaskOutput:
        batch = to_device(batch, self.device)
        rows = batch["input_ids" if "input_ids" in batch else "pixel_values"].shape[0]
        return self.task(self.injector, RowPrompts.shared(self.prompt(), rows, self.device), batch)

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        return self.task.collate(examples)

    @torch.no_grad()
    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        """Label with class probabilities (classification) or generated text."""
        examples = [Example(text=t, label="") for t in texts]
        rows = RowPrompts.shared(self.prompt(), len(texts), self.device)
        return self.task.predict(self.injector, rows, examples)

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """Parameters clipped together: one group per task."""
        return [self.trainable_parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """The task's own trainable parameters (a linear or tagging head): the training
        loop can give them their own lr (`train.head_lr`)."""
        return [p for p in self.task.parameters() if p.requires_grad]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def flattened(self) -> PromptModel:
        """The same prompt without training-only parts (an encoder, an MLP), as a model of
        the flat method they compute; the task head is kept. A method offers this by
        defining `flatten() -> (method name, options, method tensors) | None`; without
        it, or when it returns None, the model is flat already and is returned as is."""
        flat_parts = self.method.flatten()
        if flat_parts is None:
            return self
        name, options, tensors = flat_parts
        flat = PromptModel(self.backbone, self.task.config, name, options)
        state = {f"method.{key}": value for key, value in tensors.items()}
        state |= {k: v for k, v in self.state_dict().items() if k.startswith("task.")}
        flat.load_tensors(state, source=f"flattened {self.method_name}")
        return flat

    # -- prompt files ----------------------------------------------------
    def describe(self) -> dict[str, Any]:
        method_config = dataclasses.asdict(self.method.config)
        return {
            "method": {"name": self.method_name, "options": method_config},
            "task": self.task.config.to_dict(),
            "backbone": self.backbone.describe(),  # name, fingerprint, dtype, quantize
            "trainable_parameters": self.num_trainable(),
        }

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Write the prompt file: trainable tensors + everything needed to rebuild."""
        return save_prompt_file(path, self.state_dict(), dict(self.describe(), **extra))

    @classmethod
    def load(
        cls, path: str | Path, backbone: Backbone, *, check_fingerprint: bool = True
    ) -> PromptModel:
        tensors, meta = read_prompt_file(path)
        check_known(path, meta)
        if check_fingerprint:
            check_backbone(path, meta, backbone.name, backbone.fingerprint)
        model = cls(
            backbone,
            TaskConfig(**meta["task"]),
            method=meta["method"]["name"],
            method_options=meta["method"]["options"],
        )
        model.load_tensors(tensors, source=str(path))
        return model

    def load_tensors(self, tensors: dict[str, torch.Tensor], *, source: str) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise PromptFileError(
                f"{source}: tensors do not match the method: missing {missing}, unexpected {extra}"
            )
        for name, tensor in tensors.items():
            if tensor.shape != expected[name].shape:
                raise PromptFileError(
                    f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                    f"the backbone/method expects {tuple(expected[name].shape)}"
                )
        self.load_state_dict(tensors, strict=True)


def load_prompt_meta(path: str | Path) -> dict[str, Any]:
    """Metadata of a prompt file without building anything (for `softprompt info`)."""
    tensors, meta = read_prompt_file(path)
    check_known(path, meta)
    meta["tensors"] = {name: list(t.shape) for name, t in tensors.items()}
    meta["file_bytes"] = Path(path).stat().st_size
    return meta


def part_rows(part: dict[str, torch.Tensor]) -> int:
    """Rows of one task's collated batch (token ids, or pixels for images)."""
    return part["input_ids" if "input_ids" in part else "pixel_values"].shape[0]


@dataclass
class MixedBatch:
    """Rows grouped by task, in order: (task name, that task's collated rows)."""

    parts: list[tuple[str, dict[str, torch.Tensor]]]

    @property
    def rows(self) -> int:
        return sum(part_rows(part) for _, part in self.parts)


@dataclass
class MixedOutput:
    """The summed loss of a mixed batch and each task's own output."""

    loss: torch.Tensor  # () sum over tasks of each task's mean loss
    outputs: dict[str, TaskOutput] = field(default_factory=dict)

    def counts(self) -> tuple[float, float]:
        pairs = [o.counts() for o in self.outputs.values()]
        return sum(c for c, _ in pairs), sum(n for _, n in pairs)


class MultiTaskModel(nn.Module):
    """Several (method, task) pairs on one frozen backbone, run in one forward pass.

    Each distinct prompt is computed once per step and every row picks its own (see
    inject/prompt.py), so a batch mixing tasks, label sets and methods costs one pass
    of the backbone. The loss is the sum of each task's mean loss, so each prompt gets
    exactly the gradient it would get trained alone on its rows of the batch."""

    def __init__(self, models: dict[str, PromptModel]) -> None:
        super().__init__()
        if not models:
            raise ConfigError("tasks: give at least one task")
        bad = [name for name in models if not name or "." in name or not isinstance(name, str)]
        if bad:
            raise ConfigError(f"tasks: task names must be non-empty and without '.', got {bad}")
        backbones = {id(m.backbone) for m in models.values()}
        if len(backbones) != 1:
            raise ConfigError("tasks: every task of one model must use the same backbone object")
        self.models = TaskModules(models)
        first = next(iter(models.values()))
        object.__setattr__(self, "backbone", first.backbone)
        object.__setattr__(self, "injector", first.injector)

    @classmethod
    def single(cls, name: str, model: PromptModel) -> MultiTaskModel:
        return cls({name: model})

    @classmethod
    def from_files(cls, paths: dict[str, str | Path], backbone: Backbone) -> MultiTaskModel:
        """Load one prompt file per task onto one backbone (each checked against it)."""
        return cls({name: PromptModel.load(path, backbone) for name, path in paths.items()})

    @property
    def device(self) -> torch.device:
        return self.injector.device

    @property
    def names(self) -> list[str]:
        return list(self.models.keys())

    def collate(self, items: list[tuple[str, Example]]) -> MixedBatch:
        """(task, example) pairs -> rows grouped by task (first appearance order)."""
        grouped: dict[str, list[Example]] = {}
        for name, example in items:
            if name not in self.models:
                raise ConfigError(f"task {name!r} is not one of {self.names}")
            grouped.setdefault(name, []).append(example)
        return MixedBatch([(n, self.models[n].collate(ex)) for n, ex in grouped.items()])

    def row_prompts(self, batch: MixedBatch) -> RowPrompts:
        prompts = [self.models[name].prompt() for name, _ in batch.parts]
        choice = [i for i, (_, part) in enumerate(batch.parts) for _ in range(part_rows(part))]
        return RowPrompts.per_row(prompts, choice, self.device)

    def hidden_states(self, batch: MixedBatch) -> list[torch.Tensor]:
        """One pass of the backbone over every row; each part's (b, t, d) states back."""
        pad = self.backbone.spec.pad_token_id
        inputs = to_device(merge([part for _, part in batch.parts], pad), self.device)
        hidden = self.injector.hidden_states(
            self.row_prompts(batch),
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs.get("positions"),
            inputs.get("inline_index"),
        )  # (B, W, d)
        pieces, start = [], 0
        for _, part in batch.parts:
            rows, width = part["input_ids"].shape
            pieces.append(hidden[start : start + rows, :width])  # (b, t, d)
            start += rows
        return pieces

    def forward(self, batch: MixedBatch) -> MixedOutput:
        extra = self.auxiliary_loss(batch) if self.training else 0.0
        if len(batch.parts) == 1:  # one task: no merging (any input kind, images too)
            name, part = batch.parts[0]
            part = to_device(part, self.device)
            out = self.models[name].task(self.injector, self.row_prompts(batch), part)
            return MixedOutput(loss=out.loss + extra, outputs={name: out})
        outputs = {}
        if not all(self.models[name].task.merges_rows for name, _ in batch.parts):
            for name, part in batch.parts:  # a pass per task (encoder-decoders score their own)
                part = to_device(part, self.device)
                rows = RowPrompts.shared(self.models[name].prompt(), part_rows(part), self.device)
                outputs[name] = self.models[name].task(self.injector, rows, part)
            return MixedOutput(loss=sum(o.loss for o in outputs.values()) + extra, outputs=outputs)
        for (name, part), hidden in zip(batch.parts, self.hidden_states(batch), strict=True):
            task = self.models[name].task
            outputs[name] = task.score(self.injector, hidden, to_device(part, self.device))
        return MixedOutput(loss=sum(o.loss for o in outputs.values()) + extra, outputs=outputs)

    def auxiliary_loss(self, batch: MixedBatch) -> torch.Tensor | float:
        """The sum of the methods' own training objectives beyond the task loss (a method
        offers one as `auxiliary_loss(injector, prompt, rows)`, e.g. DART's fluency loss),
        over each task's rows; 0 when none has one. Added in training mode only, so
        validation and test scores are the task's alone."""
        total: torch.Tensor | float = 0.0
        for name, part in batch.parts:
            model = self.models[name]
            objective = getattr(model.method, "auxiliary_loss", None)
            if objective is not None:
                rows = to_device(part, self.device)
                total = total + objective(self.injector, model.prompt(), rows)
        return total

    @torch.no_grad()
    def predict(self, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Answer (task, text) pairs: classification rows share one forward pass, generation
        rows one decoding loop, each row with its own task's prompt."""
        results: list[dict[str, Any] | None] = [None] * len(pairs)
        generate = [i for i, (n, _) in enumerate(pairs) if self._task(n).generates]
        classify = [i for i in range(len(pairs)) if i not in set(generate)]
        if classify:
            self._classify(pairs, classify, results)
        if generate:
            self._generate(pairs, generate, results)
        return [dict(r, task=pairs[i][0]) for i, r in enumerate(results)]

    def _task(self, name: str):
        if name not in self.models:
            raise ConfigError(f"task {name!r} is not one of {self.names}")
        return self.models[name].task

    def _classify(self, pairs, rows: list[int], results: list) -> None:
        batch = self.collate([(pairs[i][0], Example(pairs[i][1], "")) for i in rows])
        output = self.forward(batch)
        order: dict[str, list[int]] = {}
        for i in rows:
            order.setdefault(pairs[i][0], []).append(i)
        for name, part in batch.parts:
            described = self.models[name].task.describe(output.outputs[name], part)
            for i, record in zip(order[name], described, strict=True):
                results[i] = record

    def _generate(self, pairs, rows: list[int], results: list) -> None:
        names = list(dict.fromkeys(pairs[i][0] for i in rows))
        prompts = [self.models[n].prompt() for n in names]
        tasks = [self.models[pairs[i][0]].task for i in rows]
        encoded = [t.rows([Example(pairs[i][1], "")]) for t, i in zip(tasks, rows, strict=True)]
        contexts, virtual = [ids[0] for ids, _ in encoded], [v[0] for _, v in encoded]
        tokens = tasks[0].decode_rows(  # every task on one backbone decodes alike
            self.injector,
            RowPrompts.per_row(prompts, [names.index(pairs[i][0]) for i in rows], self.device),
            contexts,
            max_new_tokens=[t.config.max_new_tokens for t in tasks],
            virtual=virtual,
        )
        for i, task, row in zip(rows, tasks, tokens, strict=True):
            results[i] = {"text": task.decode(row)}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Every task's head parameters (`PromptModel.head_parameters`), each once."""
        heads = {id(p): p for m in self.models.values() for p in m.head_parameters()}
        return list(heads.values())

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def parameter_groups(self) -> list[list[nn.Parameter]]:
        """One group per task, so clipping one task's gradient never rescales another's."""
        groups = [m.trainable_parameters() for m in self.models.values()]
        return [g for g in groups if g]


# -- prompts into models -----------------------------------------------------


def check_known(path: str | Path, meta: dict[str, Any]) -> None:
    """The header's method and task options, checked against the registries before a model
    is built from them (the file format itself knows no registry): every problem named."""
    task = check_fields("task", TaskConfig, meta["task"], _VERBALIZER)
    missing = [f"task.{k}" for k in task.known if k not in meta["task"]]
    problems = task.unknown + task.problems + [f"{k}: missing" for k in missing]
    name, options = meta["method"]["name"], meta["method"]["options"]
    if name not in available_methods():
        problems.append(f"method.name: unknown method {name!r}")
    else:
        method = check_fields("method.options", method_config_class(name), options)
        problems += method.unknown + method.problems
    if problems:
        raise malformed(path, problems)


_VERBALIZER = {"verbalizer": dict[str, str | list[str]] | None}


def prompt_embeddings(path: str | Path, backbone: Backbone) -> torch.Tensor:
    """The virtual tokens of another prompt file for this backbone, (n, d) float32 on the
    CPU: what the `file` init starts from (SPoT-style transfer), as the method gives them
    (methods.transfer_embeddings)."""
    source = PromptModel.load(path, backbone)
    with torch.no_grad():
        embeds = transfer_embeddings(source.method)
    if embeds is None:
        raise ConfigError(
            f"method.init_file: {path} holds a {source.method_name} prompt without virtual "
            "token embeddings; start from a soft-prompt or p-tuning file"
        )
    return embeds.detach().float().cpu()


def build_model(
    backbone: Backbone,
    dataset: Dataset,
    method: dict[str, Any],
    task: dict[str, Any],
    shared: dict[str, Any] | None = None,
) -> PromptModel:
    """A prompt model for `dataset`: `method` is {"name": ..., **options}; `task` holds the
    user's framing overrides on top of the dataset's built-in framing."""
    options = {k: v for k, v in method.items() if k != "name"}
    task = resolve_verbalizer(backbone, dataset, task)  # verbalizer "auto": chosen words
    return PromptModel(
        backbone,
        task_config_for(dataset, task),
        method=method["name"],
        method_options=options,
        shared=shared,
    )


def load_prompt(path: str | Path, backbone: Backbone | str | None = None) -> PromptModel:
    """Load a prompt file onto its backbone (by default the one named in the file)."""
    if backbone is None or isinstance(backbone, str):
        backbone = file_backbone(load_prompt_meta(path), backbone)
    return PromptModel.load(path, backbone)


def file_backbone(meta: dict[str, Any], name: str | None = None) -> Backbone:
    """The backbone a prompt file names (or `name`), with the LoRA adapter it was trained
    on merged in, as its run config records it (--backbone-adapter): the fingerprint
    would refuse the plain backbone."""
    run = meta.get("run") if isinstance(meta.get("run"), dict) else {}
    return load_backbone(name or meta["backbone"]["name"], adapter=run.get("backbone_adapter"))


def load_prompts(
    paths: dict[str, str | Path], backbone: Backbone | str | None = None
) -> MultiTaskModel:
    """Several prompt files (task name -> path) on one backbone, answering mixed batches:
    `model.predict([(task, text), ...])`."""
    if backbone is None or isinstance(backbone, str):
        backbone = file_backbone(load_prompt_meta(next(iter(paths.values()))), backbone)
    return MultiTaskModel.from_files(paths, backbone)
