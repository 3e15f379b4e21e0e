"""Task framing: how examples become token ids, and how hidden states become a loss.

* `template.Template`: text -> ids around a `{text}` slot.
* `classification.VerbalizerTask`: cloze-style scoring of label words (causal LMs).
* `classification.HeadTask`: a small linear head on pooled states (encoders).
* `generation.GenerationTask`: LM loss on target tokens only; greedy decoding.
"""

from softprompt.tasks.base import Task, TaskConfig, TaskOutput, build_task

__all__ = ["Task", "TaskConfig", "TaskOutput", "build_task"]
