"""MMD / DAN: align the two domains' feature distributions by minimising their multi-kernel maximum mean
discrepancy (Long et al., "Learning Transferable Features with Deep Adaptation Networks", ICML 2015).

    L = CE(head(F(x_s)), y_s) + w * MK-MMD²(F(x_s), F(x_t))

on the pooled features F, with Gaussian kernels of widths b·m^(i - n/2) around the batch's mean squared distance b.
"""

from dataclasses import dataclass

from ..losses import MultiKernelMMD, dann_lambda
from .base import Strategy, check


class MMD(Strategy):
    name = "mmd"
    adapts = True

    @dataclass
    class Params:
        weight: float = 0.1  # w; 1.0 collapsed the pooled features of MiniLM on books->dvd
        kernels: int = 5  # n
        multiplier: float = 2.0  # m, the ratio between neighbouring kernel widths
        ramp: bool = False  # scale w by DANN's λ_p (0 -> 1 over training), so the classifier learns first

        def __post_init__(self):
            check(self.weight >= 0, f"strategy.weight={self.weight} must be >= 0")
            check(self.kernels >= 1, f"strategy.kernels={self.kernels} must be >= 1")
            check(self.multiplier > 1, f"strategy.multiplier={self.multiplier} must be > 1")

    def __init__(self, params, model):
        super().__init__(params, model)
        self.mmd = MultiKernelMMD(params.kernels, params.multiplier)

    def loss(self, labelled, unlabelled, progress):
        task, source_features = self.task_loss(labelled)
        discrepancy = self.mmd(source_features, self.model.features(**unlabelled))
        weight = self.params.weight * (dann_lambda(progress) if self.params.ramp else 1.0)
        return task + weight * discrepancy, {"task_loss": task.item(), "mmd": discrepancy.item()}
