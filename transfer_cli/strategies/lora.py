"""LoRA: parameter-efficient transfer (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022).

The pretrained weights W stay frozen; each adapted projection learns a low-rank update:

    h = W x + (α / r) · B A x,   A ∈ R^{r×k}, B ∈ R^{d×r} (B = 0 at the start),  r << min(d, k)

Trained on the labelled source, like source_only, with well under 1% of the parameters (recorded as
trainable_parameters). The adapters come from the `peft` config group, which `strategy=lora` sets to `peft=lora`;
any other strategy can use them too: `strategy=dann peft=lora`.
"""

from ..errors import TransferError
from .base import Strategy


class LoRA(Strategy):
    name = "lora"

    def __init__(self, params, model):
        super().__init__(params, model)
        if not any("lora_" in name for name, _ in model.named_parameters()):
            raise TransferError("strategy=lora needs LoRA adapters, but peft is not lora; use peft=lora "
                                "(other adapters: strategy=source_only peft=ia3)")
