"""Score several multi-token label words after one context in a single pass.

The naive way runs `context + word` once per label word: W copies of the context
through the model (20 for newsgroups20). Here each row is the context followed by
every word but its last token, laid out one word after another; a (T, T)
visibility matrix lets each word's tokens see the whole context and their own
earlier tokens only, and each word token takes the position it would have
straight after the context. Every hidden state is then exactly what the naive row
would give, while the context runs once: T + S tokens a row instead of W (T + k).

Only the positions that predict a word token get logits: the context's last
position (every word's first token) and the S word positions after it.
"""

from __future__ import annotations

import torch

from softprompt.tasks.base import pad_right


class WordTree:
    """W label words (token id lists) scored as continuations of one context."""

    def __init__(self, words: list[list[int]]) -> None:
        self.words = words
        self.segment = [t for w in words for t in w[:-1]]  # S fed tokens
        owner = [i for i, w in enumerate(words) for _ in w[:-1]]  # (S,) word of each
        offset = [j for w in words for j in range(len(w) - 1)]  # (S,) index inside its word
        owner_t = torch.tensor(owner, dtype=torch.long)
        offset_t = torch.tensor(offset, dtype=torch.long)
        same_word = owner_t[:, None] == owner_t[None, :]  # (S, S)
        earlier = offset_t[None, :] <= offset_t[:, None]  # (S, S)
        self.segment_sees = same_word & earlier  # (S, S)
        self.segment_offset = offset_t  # (S,)
        self.score_index, self.score_tokens, self.score_mask = self._score_tables()

    def _score_tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(W, K) tables: which scored position predicts token j of word w, and that token.

        Scored position 0 is the context's last token; position 1 + s is fed token s."""
        k = max(len(w) for w in self.words)
        index = torch.zeros(len(self.words), k, dtype=torch.long)
        tokens = torch.zeros(len(self.words), k, dtype=torch.long)
        mask = torch.zeros(len(self.words), k)
        start = 0  # where word w's fed tokens begin in the segment
        for w, word in enumerate(self.words):
            for j, token in enumerate(word):
                index[w, j] = 0 if j == 0 else 1 + start + j - 1
                tokens[w, j], mask[w, j] = token, 1.0
            start += len(word) - 1
        return index, tokens, mask

    def collate(self, contexts: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
        """Rows `context + segment`, right-padded, with a (B, T, T) visibility mask."""
        s = len(self.segment)
        ids, _ = pad_right([c + self.segment for c in contexts], pad_id)  # (B, T)
        batch, width = ids.shape
        sees = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1)  # (B, T, T); pads: self
        positions = torch.zeros(batch, width, dtype=torch.long)  # (B, T)
        for row, context in enumerate(contexts):
            c = len(context)
            sees[row, :c, :c] = torch.ones(c, c, dtype=torch.bool).tril()
            sees[row, c : c + s, :c] = True
            sees[row, c : c + s, c : c + s] = self.segment_sees
            positions[row, :c] = torch.arange(c)
            positions[row, c : c + s] = c + self.segment_offset
        answer = torch.tensor([len(c) - 1 for c in contexts])  # (B,)
        return {
            "input_ids": ids,
            "attention_mask": sees,
            "positions": positions,
            "answer_index": answer,
        }

    def log_probs(self, hidden: torch.Tensor, answer_index: torch.Tensor, injector) -> torch.Tensor:
        """(B, T, d) hidden states -> (B, W) log-probability of each whole word."""
        device = hidden.device
        steps = answer_index[:, None] + torch.arange(
            1 + len(self.segment), device=device
        )  # (B, 1 + S)
        scored = hidden.gather(
            1, steps.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        )  # (B, 1 + S, d)
        log_probs = injector.logits(scored).float().log_softmax(-1)  # (B, 1 + S, V)
        index, tokens = self.score_index.to(device), self.score_tokens.to(device)
        token_lp = log_probs[:, index.flatten(), tokens.flatten()]  # (B, W * K)
        per_token = token_lp.view(-1, *index.shape) * self.score_mask.to(device)  # (B, W, K)
        return per_token.sum(-1)  # (B, W)
