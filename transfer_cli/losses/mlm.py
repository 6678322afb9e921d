"""Masked-language modelling (BERT: Devlin et al. 2019), for domain-adaptive pre-training."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: Sequence[int], mask_id: int,
                vocab_size: int, probability: float = 0.15) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption: pick `probability` of the real, non-special tokens; of those, 80% -> [MASK], 10% -> a
    random token, 10% unchanged. Returns (corrupted ids, labels: the original id where picked, else -100)."""
    candidates = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(list(special_ids), device=input_ids.device))
    picked = candidates & (torch.rand(input_ids.shape, device=input_ids.device) < probability)
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, device=input_ids.device)
    corrupted = torch.where(picked & (roll < 0.8), torch.full_like(input_ids, mask_id), input_ids)
    random_tokens = torch.randint(vocab_size, input_ids.shape, device=input_ids.device)
    corrupted = torch.where(picked & (roll >= 0.8) & (roll < 0.9), random_tokens, corrupted)
    return corrupted, labels


class MaskedLMHead(nn.Module):
    """logits = LayerNorm(GELU(W h)) E^T + b: BERT's MLM head with the decoder E tied to the input embeddings,
    so a backbone that ships without an MLM head (such as sentence-transformers models) needs only the small
    transform trained from scratch."""

    def __init__(self, hidden: int, vocab_size: int, eps: float = 1e-12):
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden, eps=eps))
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(hidden), embeddings, self.bias)
