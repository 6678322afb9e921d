"""Strategies: one file each, named like its config (`configs/strategy/NAME.yaml` -> `strategies/NAME.py`)."""

from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple, Type

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import TransferError
from .base import Context, Group, Phase, Sharpness, Strategy

__all__ = ["Context", "Group", "Phase", "Sharpness", "Strategy", "strategy_class", "strategy_params", "build_strategy"]


def strategy_class(name: str) -> Type[Strategy]:
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:
        raise TransferError(f"no strategy module transfer_cli/strategies/{name}.py; see `transfer list` for the strategies") from None
    found = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, Strategy) and v.name == name]
    if not found:
        raise TransferError(f"transfer_cli/strategies/{name}.py defines no Strategy with name = '{name}'")
    return found[0]


def strategy_params(config: Dict[str, Any]) -> Tuple[Type[Strategy], Any]:
    """The strategy class named by `config['name']` and its parameters, checked against its `Params`."""
    config = dict(config)
    name = config.pop("name")
    config.pop("description", None)
    cls = strategy_class(name)
    try:
        params = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls.Params), config))
    except OmegaConfBaseException as e:
        allowed = ", ".join(cls.Params.__dataclass_fields__) or "none"
        key = f"strategy.{e.full_key}: " if getattr(e, "full_key", None) else ""
        raise TransferError(f"strategy '{name}': {key}{str(e).splitlines()[0]} (its parameters: {allowed})") from None
    return cls, params


def build_strategy(config: Dict[str, Any], model) -> Strategy:
    cls, params = strategy_params(config)
    return cls(params, model)
