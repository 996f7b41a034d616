"""Self-supervised methods behind one interface. Importing this package registers all of them."""

from methods import membank, moco, none, qk, simclr, sscd, xbm  # noqa: F401  (registration side effects)
from methods.base import Method, MethodConfig, MethodContext, TrainBatch, TrainContext
from methods.registry import create_method, get_method, list_methods, register_method

__all__ = [
    "Method",
    "MethodConfig",
    "MethodContext",
    "TrainBatch",
    "TrainContext",
    "create_method",
    "get_method",
    "list_methods",
    "register_method",
]
