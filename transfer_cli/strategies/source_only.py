"""Source-only: train on labelled source data, evaluate on the target as is (zero-shot transfer).

The lower bound every adaptation method must beat; it never sees a target example, labelled or not."""

from .base import Strategy


class SourceOnly(Strategy):
    name = "source_only"
