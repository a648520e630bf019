"""The merge-method registry, and the parameter declarations the search space is built from.

A method is a small pure tensor function `function(base, models, packing, **params) -> tensor`:
`base` and each of `models` are 1-D (flattened, possibly packed) tensors of one dtype on one device, and the result
has that dtype. Each method declares its parameters (range and default), so a recipe is validated and a search space
is built from the declarations alone: adding a method is one file that calls `register`.

Parameters come in three kinds: a float shared by all inputs (`lambda`), a float per input (`weights`, keyed by
input name in a recipe, passed to the function as a tuple aligned with `(base, *models)`), and a choice of one input
(`pick`'s `model`, passed as that input's index).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from search.errors import MergeError
from search.lazy import lazy_module
from search.merge.packing import Packing
from service.errors import unknown_name

if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")  # on first use: see search/lazy.py

MethodFunction = Callable[..., "torch.Tensor"]


@dataclass(frozen=True)
class FloatParam:
    """A real-valued parameter in [low, high]: one value, or one per input (`per_input`, base included) or per
    fine-tuned model (`per_model`, base excluded: a weight on each task vector)."""

    name: str
    low: float
    high: float
    default: float
    per_input: bool = False
    per_model: bool = False
    doc: str = ""

    def keys(self, inputs: Sequence[str]) -> list[str] | None:
        """The input names this parameter takes a value for (base first), or None for a single value."""
        if self.per_input:
            return list(inputs)
        return list(inputs[1:]) if self.per_model else None


@dataclass(frozen=True)
class InputChoice:
    """A choice of one input model, by name."""

    name: str
    doc: str = ""


Param = FloatParam | InputChoice


def _check_range(where: str, param: FloatParam, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MergeError(f"{where}: {param.name} must be a number in [{param.low}, {param.high}], found {value!r}")
    if not param.low <= value <= param.high:
        raise MergeError(f"{where}: {param.name}={value} is out of range [{param.low}, {param.high}]")
    return float(value)


@dataclass(frozen=True)
class MergeMethod:
    name: str
    function: MethodFunction
    params: tuple[Param, ...]
    reference: str
    summary: str

    def defaults(self, inputs: Sequence[str]) -> dict[str, Any]:
        """Recipe-form parameters at their declared defaults."""
        result: dict[str, Any] = {}
        for p in self.params:
            if isinstance(p, InputChoice):
                result[p.name] = inputs[0]
            elif (keys := p.keys(inputs)) is not None:
                result[p.name] = {name: p.default for name in keys}
            else:
                result[p.name] = p.default
        return result

    def resolve(self, params: Mapping[str, Any], inputs: Sequence[str], where: str) -> dict[str, Any]:
        """Check recipe-form `params` against the declarations; return the function's keyword arguments.

        `inputs` are the input names in order (base first); `where` prefixes every error (e.g. the group's name).
        Omitted parameters take their defaults; unknown ones are an error.
        """
        declared = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(declared))
        if unknown:
            valid = ", ".join(declared) or "none"
            raise MergeError(f"{where}: {self.name} has no parameter '{unknown[0]}' (its parameters: {valid})")
        merged = {**self.defaults(inputs), **params}
        kwargs: dict[str, Any] = {}
        for p in self.params:
            value = merged[p.name]
            if isinstance(p, InputChoice):
                if value not in inputs:
                    raise MergeError(
                        f"{where}: {p.name} must name one of the inputs ({', '.join(inputs)}), found {value!r}"
                    )
                kwargs[p.name] = list(inputs).index(value)
            elif (keys := p.keys(inputs)) is not None:
                if not isinstance(value, Mapping) or set(value) != set(keys):
                    named = sorted(value) if isinstance(value, Mapping) else value
                    each = "input" if p.per_input else "fine-tuned model"
                    raise MergeError(
                        f"{where}: {p.name} must give a value for each {each} ({', '.join(keys)}), found {named!r}"
                    )
                kwargs[p.name] = tuple(_check_range(f"{where} {p.name}[{i}]", p, value[i]) for i in keys)
            else:
                kwargs[p.name] = _check_range(where, p, value)
        return kwargs

    def __call__(
        self, base: torch.Tensor, models: Sequence[torch.Tensor], packing: Packing, **kwargs: Any
    ) -> torch.Tensor:
        if not models:
            raise MergeError(f"{self.name} needs at least one model besides the base")
        return self.function(base, list(models), packing, **kwargs)


METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in METHODS:
        raise ValueError(f"merge method {method.name} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """The registered method called `name`; an unknown name fails listing the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise MergeError(unknown_name("merge method", name, sorted(METHODS))) from None


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """Half-precision inputs are merged in float32 and cast back; float32/64 stay as they are."""
    return torch.promote_types(tensor.dtype, torch.float32)


def normalized(weights: Sequence[float], method: str) -> tuple[float, ...]:
    total = sum(weights)
    if total <= 0:
        raise MergeError(f"{method} weights must not all be zero")
    return tuple(w / total for w in weights)
