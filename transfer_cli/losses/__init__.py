"""Losses and layers that strategies combine; one module each, the maths in the docstring."""

from .adversarial import DomainDiscriminator, GradientReversal, dann_lambda

__all__ = ["DomainDiscriminator", "GradientReversal", "dann_lambda"]
