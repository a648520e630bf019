"""Merge methods (a registry) and the engine that applies a recipe to resident input weights."""

from search.merge import linear, model_stock, pick, slerp, task_arithmetic  # noqa: F401  (registers them)
from search.merge.base import METHODS, FloatParam, InputChoice, MergeMethod, get_method, register
from search.merge.packing import Packing

__all__ = ["METHODS", "FloatParam", "InputChoice", "MergeMethod", "Packing", "get_method", "register"]
