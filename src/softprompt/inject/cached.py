"""The causal injector of a served backbone, with each task's prompt K/V from a cache.

`CachedInjector` is the causal injector with one change: the per-row prefix of a batch
is assembled from each task's cached K/V (`prompt_cache.PromptKVCache`) instead of running the
prompts. Everything downstream (masks, positions, scoring, decoding) is the injector's
own code, so a row's answer equals the same row run alone through its task.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

from softprompt.inject import fast_linear
from softprompt.inject.causal import CausalInjector, PrefixCache
from softprompt.inject.prompt import Prompt, RowPrompts
from softprompt.inject.prompt_cache import Key, PromptKVCache


@dataclass(eq=False)
class CachedPrompt(Prompt):
    """A task's prompt as a cache key; `source()` computes the real prompt on a miss."""

    key: Key | None = None
    source: Callable[[], Prompt] | None = None


class CachedInjector(CausalInjector):
    """A causal injector whose prompt prefixes come from a per-task K/V cache."""

    def __init__(
        self, base: CausalInjector, cache: PromptKVCache, *, pack_weights: bool = True
    ) -> None:
        super().__init__(base.backbone)  # the head check ran for this backbone already
        self.kv_cache = cache
        # the frozen layers on prepacked oneDNN weights inside `packed_weights()`
        self.packs = pack_weights and fast_linear.install(self.backbone.model)
        # K/V used in the current engine call, whatever the cache bound: a prompt is
        # computed at most once per call even when the cache is off or evicts it
        self.in_use: dict[Key, tuple[list[tuple[torch.Tensor, ...]], int]] | None = None

    def packed_weights(self) -> AbstractContextManager:
        """Run the model on its prepacked weights in this thread (`fast_linear`), where
        they were installed; otherwise as it is."""
        return fast_linear.packed() if self.packs else nullcontext()

    def prompt_kv(self, prompt: Prompt) -> tuple[list[tuple[torch.Tensor, ...]], int]:
        """One prompt's per-layer K/V at batch 1 ((1, kvh, w, hd) each) and its width w."""
        key = getattr(prompt, "key", None)
        if key is not None and self.in_use is not None and key in self.in_use:
            return self.in_use[key]
        found = self._cached_or_run(prompt, key)
        if key is not None and self.in_use is not None:
            self.in_use[key] = found
        return found

    def _cached_or_run(self, prompt: Prompt, key: Key | None):
        if key is not None:
            hit = self.kv_cache.get(key)
            if hit is not None:
                return hit.kv, hit.width
        real = prompt.source() if isinstance(prompt, CachedPrompt) else prompt
        with torch.no_grad():
            kv, width = self._run_group([real])
        kv = [(k.detach(), v.detach()) for k, v in kv]
        if key is not None:
            self.kv_cache.put(key, kv, width)
        return kv, width

    def prefix_cache(self, prompts: Prompt | RowPrompts, batch_size: int) -> PrefixCache:
        """Each row's prompt K/V from the cache, left-padded to the widest: see PrefixCache."""
        rows = RowPrompts.of(prompts, batch_size, self.device)
        parts = [self.prompt_kv(p) for p in rows.prompts]
        widths = torch.tensor([w for _, w in parts], device=self.device)  # (k,)
        pick = rows.index.to(self.device)  # (B,)
        lengths = widths[pick]  # (B,)
        m = int(widths.max())
        slots = torch.arange(m, device=self.device)
        mask = (slots[None, :] >= m - lengths[:, None]).long()  # (B, m)
        if m == 0:
            return PrefixCache(None, mask, lengths)
        template = next(kv for kv, w in parts if w)
        cache = DynamicCache(config=self.config)
        for layer in range(len(template)):
            keys, values = (
                self._stack(parts, template, layer, i, m, pick, batch_size) for i in (0, 1)
            )
            cache.update(keys, values, layer)
        return PrefixCache(cache, mask, lengths)

    @staticmethod
    def _stack(parts, template, layer: int, i: int, m: int, pick, batch: int) -> torch.Tensor:
        """One layer's keys (i=0) or values (i=1) for every row: (B, kvh, m, hd)."""
        blocks = []
        for kv, width in parts:
            if width:
                tensor = kv[layer][i]  # (1, kvh, w, hd)
                blocks.append(F.pad(tensor, (0, 0, m - width, 0)) if width < m else tensor)
            else:  # no prefix at all: zeros in slots the mask hides
                blocks.append(torch.zeros_like(template[layer][i][:, :, :1]).expand(-1, -1, m, -1))
        if len(blocks) == 1:
            return blocks[0].expand(batch, -1, -1, -1)  # a view, as the injector does
        return torch.cat(blocks)[pick]  # (B, kvh, m, hd)
