"""Losses and layers that strategies combine; one module each, the maths in the docstring."""

from .adversarial import BottleneckHead, DomainDiscriminator, GradientReversal, dann_lambda
from .conditional import MultilinearMap, entropy, entropy_weights
from .discrepancy import CoralLoss, MultiKernelMMD, covariance
from .distillation import DistillationLoss
from .mlm import MaskedLMHead, mask_tokens

__all__ = [
    "BottleneckHead", "CoralLoss", "DistillationLoss", "DomainDiscriminator", "GradientReversal", "MaskedLMHead", "MultiKernelMMD",
    "MultilinearMap", "covariance", "dann_lambda", "entropy", "entropy_weights", "mask_tokens",
]
