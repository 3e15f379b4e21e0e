"""The only code that touches the frozen model.

A method produces a `Prompt`; an injector turns a `Prompt` plus token ids into
hidden states of the real tokens. Architecture quirks (BOS handling, where an
encoder keeps its [CLS], how a decoder caches keys/values) live here and in
`softprompt.backbones`, nowhere else.
"""

from softprompt.inject.base import Injector, Prompt, make_injector
from softprompt.inject.causal import CausalInjector
from softprompt.inject.encoder import EncoderInjector

__all__ = ["CausalInjector", "EncoderInjector", "Injector", "Prompt", "make_injector"]
