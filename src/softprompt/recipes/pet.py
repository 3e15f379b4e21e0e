"""PET and iPET (Schick and Schuetze 2021, https://arxiv.org/abs/2001.07676) as a recipe.

PET turns K labelled examples per class into a classifier by asking the model the same
question several ways: each pattern (a template, with its label words) gets its own
soft prompt trained on the K shots; their ensemble (the mean of the patterns' class
probabilities) labels the unlabelled texts with soft labels; one final prompt is
distilled on those soft labels with a soft cross-entropy (KL to the ensemble up to a
constant). Every stage is an ordinary training run (train/loop.py) in its own folder,
so the loop has no PET branch: soft labels are rows that carry probabilities
(data/soft.py), which the classification loss reads like any target.

iPET (`generations`): generation g > 0 trains every pattern again on the K shots plus
the previous ensemble's soft labels of a growing, nested subset of the unlabelled texts
(`growth` ** g times the number of shots). Schick and Schuetze label each model's extra
rows with the ensemble of the *other* patterns and keep hard labels; here each
generation uses the whole previous ensemble's probabilities, which keeps one labelling
per generation and its files simple to read.

Layout of OUT: patterns/<i>/ (generation 0), generations/<g>/patterns/<i>/ (iPET),
labels-<g>.jsonl (generation g's ensemble labels of the unlabelled texts), distilled/
(the final prompt), report.md and report.json (every pattern, each generation's
ensemble and the distilled prompt, on the test split).
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.backbones import Backbone, load_backbone
from softprompt.config import RunConfig
from softprompt.data import Dataset, Example
from softprompt.data.shots import sample_shots
from softprompt.data.soft import SoftExample, soft_example
from softprompt.device import resolve_device
from softprompt.ensemble import PromptEnsemble, evaluate_ensemble
from softprompt.errors import ConfigError
from softprompt.evaluate import evaluate
from softprompt.files import atomic_write_text
from softprompt.model import PromptModel, build_model
from softprompt.recipes.loading import load_data
from softprompt.recipes.run import limit_test
from softprompt.train import TrainConfig, train


@dataclass
class PetConfig:
    """`patterns`: one task framing per pattern ({"template": ..., "verbalizer": ...}),
    at least two; `distill_pattern` is the framing the final prompt uses."""

    patterns: list[dict[str, Any]]
    method: dict[str, Any] = field(default_factory=lambda: {"name": "soft-prompt", "n_tokens": 8})
    train: TrainConfig = field(default_factory=TrainConfig)
    generations: int = 0
    growth: int = 5
    distill_pattern: int = 0
    unlabelled_limit: int = 0  # at most this many unlabelled texts are labelled (0 = all)
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.patterns) < 2:
            raise ConfigError(
                f"pet.patterns: an ensemble needs at least 2 patterns, got {len(self.patterns)}; "
                "give more --pattern templates or --words sets"
            )
        for key in ("generations", "unlabelled_limit"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"pet.{key}: must be a whole number >= 0, got {value!r}")
        if isinstance(self.growth, bool) or not isinstance(self.growth, int) or self.growth < 1:
            raise ConfigError(f"pet.growth: must be a whole number >= 1, got {self.growth!r}")
        if not 0 <= self.distill_pattern < len(self.patterns):
            raise ConfigError(
                f"pet.distill_pattern: must index one of the {len(self.patterns)} patterns "
                f"(0..{len(self.patterns) - 1}), got {self.distill_pattern}"
            )


def pattern_grid(
    templates: list[str], verbalizers: list[dict[str, list[str]] | None]
) -> list[dict[str, Any]]:
    """Every template with every verbalizer (None: the dataset's own label words)."""
    return [
        {"template": t, **({"verbalizer": v} if v is not None else {})}
        for t in templates
        for v in verbalizers or [None]
    ]


# -- labelling ----------------------------------------------------------------------


@torch.no_grad()
def ensemble_probs(members: list[PromptModel], texts: list[str], batch_size: int) -> torch.Tensor:
    """(N, C): the mean over members of each member's class probabilities per text."""
    ensemble = PromptEnsemble(members)
    step = max(1, batch_size // len(members))
    parts = [
        ensemble.member_probs([Example(t, "") for t in texts[i : i + step]]).mean(0)  # (b, C)
        for i in range(0, len(texts), step)
    ]
    return torch.cat(parts).cpu() if parts else torch.zeros(0, len(ensemble.labels))


def soft_labels(members: list[PromptModel], texts: list[str], batch_size: int) -> list[SoftExample]:
    """The ensemble's labels of `texts`, as rows a distilled prompt trains on."""
    labels = members[0].task.config.labels
    probs = ensemble_probs(members, texts, batch_size)
    total = probs.sum(-1, keepdim=True)
    return [soft_example(t, labels, p.tolist()) for t, p in zip(texts, probs / total, strict=True)]


def _write_labels(path: Path, rows: list[SoftExample]) -> None:
    lines = "".join(json.dumps({"text": r.text, "probs": list(r.probs)}) + "\n" for r in rows)
    atomic_write_text(path, lines)


# -- stages -------------------------------------------------------------------------


@dataclass
class _Stage:
    """One trained prompt: where it lives and how long it trained."""

    name: str
    path: Path
    seconds: float
    best_step: int


def _train_one(
    backbone: Backbone,
    dataset: Dataset,
    pattern: dict[str, Any],
    config: PetConfig,
    out: Path,
    name: str,
    resume: bool,
    progress: bool,
) -> _Stage:
    model = build_model(backbone, dataset, config.method, pattern)
    meta = {"pet": {"stage": name, "pattern": pattern}}
    result = train(model, dataset, config.train, out, resume=resume, meta=meta, progress=progress)
    return _Stage(name, result.prompt_path, result.seconds, result.best_step)


def _generation(
    backbone: Backbone,
    dataset: Dataset,
    config: PetConfig,
    out: Path,
    generation: int,
    resume: bool,
    progress: bool,
) -> list[_Stage]:
    return [
        _train_one(
            backbone,
            dataset,
            pattern,
            config,
            out / "patterns" / str(i),
            f"generation {generation} pattern {i}",
            resume,
            progress,
        )
        for i, pattern in enumerate(config.patterns)
    ]


def _load(stages: list[_Stage], backbone: Backbone) -> list[PromptModel]:
    return [PromptModel.load(s.path, backbone) for s in stages]


@dataclass
class PetResult:
    rows: list[dict[str, Any]]
    distilled: Path
    labels: list[SoftExample]

    def markdown(self) -> str:
        head = "| stage | test accuracy | test macro-F1 | train time |\n|---|---|---|---|\n"
        lines = [
            f"| {r['name']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | "
            + (f"{r['train_seconds']:.0f} s |" if "train_seconds" in r else "- |")
            for r in self.rows
        ]
        return head + "\n".join(lines) + "\n"


def _score_generation(
    stages: list[_Stage], backbone: Backbone, dataset: Dataset, config: PetConfig, generation: int
) -> list[dict[str, Any]]:
    scores = evaluate_ensemble(
        _load(stages, backbone), dataset.test, batch_size=config.train.eval_batch_size
    )
    rows = [
        {"name": s.name, **member, "train_seconds": s.seconds, "path": str(s.path)}
        for s, member in zip(stages, scores["members"], strict=True)
    ]
    rows.append({"name": f"generation {generation} ensemble (mean)", **scores["ensemble_mean"]})
    return [{**row, "examples": scores["examples"]} for row in rows]


def pet(
    backbone: Backbone,
    dataset: Dataset,
    unlabelled: list[str],
    config: PetConfig,
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> PetResult:
    """Run PET (or iPET) on a k-shot `dataset` (its train and validation splits are the
    shots) with `unlabelled` texts; score every stage on the test split; write the report."""
    out = Path(out)
    if not unlabelled:
        raise ConfigError("pet: no unlabelled texts to label; give a training split larger than 2K")
    texts = list(unlabelled)
    random.Random(f"pet:{config.seed}").shuffle(texts)  # nested subsets for iPET
    texts = texts[: config.unlabelled_limit or None]
    batch = config.train.eval_batch_size
    stages = _generation(backbone, dataset, config, out, 0, resume, progress)
    rows = _score_generation(stages, backbone, dataset, config, 0)
    labels = soft_labels(_load(stages, backbone), texts, batch)
    _write_labels(out / "labels-0.jsonl", labels)
    for g in range(1, config.generations + 1):
        size = len(dataset.train) * config.growth**g
        grown = dataclasses.replace(dataset, train=dataset.train + labels[:size])
        stages = _generation(
            backbone, grown, config, out / "generations" / str(g), g, resume, progress
        )
        rows += _score_generation(stages, backbone, dataset, config, g)
        labels = soft_labels(_load(stages, backbone), texts, batch)
        _write_labels(out / f"labels-{g}.jsonl", labels)
    distill_set = dataclasses.replace(dataset, train=list(labels))
    final = _train_one(
        backbone,
        distill_set,
        config.patterns[config.distill_pattern],
        config,
        out / "distilled",
        "distilled",
        resume,
        progress,
    )
    scores = evaluate(
        PromptModel.load(final.path, backbone), dataset.test, batch_size=batch, progress=progress
    )
    rows.append({"name": "distilled", **scores, "train_seconds": final.seconds})
    result = PetResult(rows=rows, distilled=final.path, labels=labels)
    atomic_write_text(out / "report.md", result.markdown())
    settings = asdict(config)
    report = {"rows": rows, "config": settings, "unlabelled": len(texts)}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    return result


# -- from a run config (the CLI) ----------------------------------------------------


def pet_inputs(run: RunConfig) -> tuple[Dataset, list[str]]:
    """The run's k-shot dataset and the unlabelled rest of its training split; the test
    split bounded by `eval.test_limit`. PET needs `data.shots` (K per class)."""
    specs = run.task_specs()
    if len(specs) != 1:
        raise ConfigError("pet: give one task (data/method/task), not a `tasks` list")
    data = specs[0].data
    if data.shots is None:
        raise ConfigError("pet: --shots K is required (K labelled rows per class to train on)")
    full = load_data(dataclasses.replace(data, shots=None))
    sample = sample_shots(full.train, full.labels, data.shots, data.seed)
    note = f"{data.shots}-shot sample (data seed {data.seed})"
    dataset = dataclasses.replace(
        full, train=sample.train, validation=sample.validation, description=note
    )
    return limit_test(dataset, run.eval.test_limit), sample.unlabelled


def run_pet(
    run: RunConfig,
    templates: list[str],
    verbalizers: list[dict[str, list[str]] | None],
    *,
    resume: bool = False,
    progress: bool = True,
    **options: Any,
) -> PetResult:
    """PET on the run's backbone and k-shot data: `templates` x `verbalizers` are the
    patterns (on top of the run's task framing); `options` are PetConfig's other fields."""
    patterns = [{**run.task, **p} for p in pattern_grid(templates, verbalizers)]
    config = PetConfig(patterns=patterns, method=run.method, train=run.train, **options)
    dataset, unlabelled = pet_inputs(run)
    device = resolve_device(run.train.device)
    backbone = load_backbone(
        run.backbone,
        dtype=run.backbone_dtype,
        quantize=run.backbone_quantize,
        device=device,
        adapter=run.backbone_adapter,
    )
    backbone.model.to(device)
    return pet(backbone, dataset, unlabelled, config, run.out, resume=resume, progress=progress)
