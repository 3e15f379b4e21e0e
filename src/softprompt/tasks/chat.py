"""Chat templates: a task's input rendered as a conversation by the backbone's tokenizer.

Instruct backbones were tuned on text inside their chat template; a prompt trained on
bare text asks them for something they never saw. With `task.chat_template: true` the
`{text}` of the task's template is the conversation, rendered by
`tokenizer.apply_chat_template` with the assistant's header at the end (the generation
prompt): a plain input (a training row, a /classify or /generate text, a completions
prompt) is one user message, and a served chat request sends its whole message list
(system, user and assistant turns) as a `Conversation`. The template's other pieces,
virtual-token slots included, sit where the template puts them around the conversation:
`{p:8}{text}` puts 8 virtual tokens in front of it (a learned system prompt), `{text}{p:2}`
after the assistant's header. The BOS text a chat template writes at its start is left
out when the backbone puts BOS in front of every row already. `task.chat_system` is a
system message (the instruction an instruct model reads) put before the user's; a served
conversation that brings its own system message uses that one instead.
"""

from __future__ import annotations

from typing import Any

from softprompt.errors import ConfigError

ROLES = ("system", "developer", "user", "assistant")


class Conversation(str):
    """Text already rendered by a chat template: a chat-template task takes it as is."""


def check_chat_template(tokenizer: Any, kind: str, backbone: str) -> None:
    """Refuse `task.chat_template` where it cannot be honoured, naming the fix."""
    if kind != "causal-lm":
        raise ConfigError(
            f"task.chat_template: needs a causal LM; {backbone} is an {kind} "
            "(leave task.chat_template out)"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"task.chat_template: the tokenizer of {backbone} has no chat template "
            "(tokenizer.chat_template is unset); use an instruct/chat backbone, or leave "
            "task.chat_template out to frame the bare text"
        )


def render(tokenizer: Any, messages: list[dict[str, str]], *, drop_bos: bool) -> Conversation:
    """`messages` ({"role", "content"} dicts) through the chat template, ending with the
    assistant's header; a template that refuses them (e.g. roles that do not alternate)
    is a `ConfigError` carrying its own message."""
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise ConfigError(
                f"messages[{i}].role: must be one of {list(ROLES)}, got {message.get('role')!r}"
            )
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 - a jinja template raises what it likes
        raise ConfigError(f"messages: the backbone's chat template refused them: {exc}") from None
    bos = getattr(tokenizer, "bos_token", None)
    if drop_bos and bos and text.startswith(bos):
        text = text[len(bos) :]
    return Conversation(text)


def cut_text(tokenizer: Any, text: str, max_text_tokens: int) -> str:
    """`text` cut to its first `max_text_tokens` tokens (before it is rendered, so the
    chat framing around it is never cut)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_text_tokens else tokenizer.decode(ids[:max_text_tokens])
