"""A classifier from a masked-LM head and a cloze prompt (Schick & Schütze, "Exploiting Cloze Questions for Few Shot
Text Classification and Natural Language Inference", EACL 2021): each text is followed by a prompt with a mask,

    x' = [CLS] x  It was [MASK]. [SEP],    logit_c = MLM(x')[mask, v_c]

where v_c is class c's one-token word (its verbaliser). The head is the checkpoint's own pretrained masked-LM head;
a backbone saved without one has nothing to predict words with, and is refused."""

from __future__ import annotations

from typing import Any, List

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..errors import TransferError
from . import TransferModel, load_masked_lm_head, max_positions

METHOD_HINT = ("use strategy.method=similarity (any sentence encoder), or a model with one, such as bert-base or "
               "roberta-base")


class VerbalizerHead(nn.Module):
    """logit_c = the masked-LM head's score of word v_c at the mask."""

    def __init__(self, lm_head: nn.Module):
        super().__init__()
        self.lm_head = lm_head
        self.words: List[int] = []  # v_c, set once the tokenizer and the labels are known
        self.kind = "cloze"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.lm_head(features.unsqueeze(1)).squeeze(1)[:, self.words]


class ClozeModel(TransferModel):
    """The backbone of `model` with a prompt after each text; its features are the hidden state at the mask."""

    def __init__(self, model: TransferModel):
        super().__init__(model.backbone, model.num_labels, model.pooling, name=model.name)
        try:
            self.head = VerbalizerHead(load_masked_lm_head(model))
        except TransferError as e:
            raise TransferError(f"strategy.method=cloze needs a pretrained masked-LM head: {e}; {METHOD_HINT}") from None
        self.limit = max_positions(model.backbone.config)
        self.prompt: List[int] = []  # the prompt's token ids, mask included
        self.mask_at = 0  # where the mask is in the prompt
        self.pad_id = 0

    def set_prompt(self, tokenizer: Any, prompt: str, words: List[str], labels: List[str]) -> None:
        """The prompt's ids, and each label's word as one token id. Words are tokenized in place of the mask, so that
        a BPE vocabulary's leading-space tokens ("Ġgreat") come out as they would in the text."""
        if tokenizer.mask_token is None:
            raise TransferError(f"the tokenizer of model '{self.name}' has no mask token; {METHOD_HINT}")

        def tokens(word: str) -> List[int]:
            return tokenizer(" " + prompt.format(mask=word), add_special_tokens=False)["input_ids"]

        self.prompt = tokens(tokenizer.mask_token)
        self.mask_at = self.prompt.index(tokenizer.mask_token_id)
        self.pad_id = tokenizer.pad_token_id or 0
        self.head.words = []
        for label, word in zip(labels, words):
            ids = tokens(word)
            elsewhere = [a != b for i, (a, b) in enumerate(zip(ids, self.prompt)) if i != self.mask_at]
            if len(ids) != len(self.prompt) or any(elsewhere):  # the word split, or merged with its neighbours
                raise TransferError(f"strategy.verbalizers.{label}: '{word}' is not one token of model '{self.name}' "
                                    f"in the prompt '{prompt}'; choose a word that is")
            self.head.words.append(ids[self.mask_at])

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[CLS] text [SEP] -> [CLS] text prompt [SEP], the text cut where the positions run out; the mask's state."""
        prompt = input_ids.new_tensor(self.prompt)
        lengths = attention_mask.sum(1).tolist()
        kept = [min(n, self.limit - len(self.prompt)) - 1 for n in lengths]  # text tokens, with the opening one
        rows = [torch.cat([ids[:k], prompt, ids[n - 1:n]]) for ids, n, k in zip(input_ids, lengths, kept)]
        ids = pad_sequence(rows, batch_first=True, padding_value=self.pad_id)
        mask = pad_sequence([torch.ones_like(row) for row in rows], batch_first=True)
        hidden = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden[torch.arange(len(rows), device=ids.device), torch.tensor(kept, device=ids.device) + self.mask_at]
