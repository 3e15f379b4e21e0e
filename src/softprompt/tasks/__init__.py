"""Task framing: how examples become token ids, and how hidden states become a loss.

* `template.Template`: text -> ids around a `{text}` slot.
* `classification.VerbalizerTask`: cloze-style scoring of label words (causal LMs).
* `classification.HeadTask`: a small linear head on pooled states (encoders).
* `generation.GenerationTask`: LM loss on target tokens only; greedy decoding.
* `mixed`: rows of several tasks (and prompts) in one forward pass.

A task module registers itself (`register_task`); the registry imports every module
of this package on its first lookup, so no import list names the tasks.
"""

from softprompt.backbones import Backbone
from softprompt.tasks.base import TASKS, Task, TaskConfig, TaskOutput, register_task, task_name


def build_task(config: TaskConfig, backbone: Backbone) -> Task:
    """The registered task that frames `config` on this backbone."""
    return TASKS.build(task_name(config, backbone), config, backbone)


__all__ = ["TASKS", "Task", "TaskConfig", "TaskOutput", "build_task", "register_task", "task_name"]
