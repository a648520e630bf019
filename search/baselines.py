"""The configurations a search is compared against, defined once, and the initial design that starts with them.

The search's initial design starts with every one of them and the report scores the same list, so on calibration
data the pick is never below a baseline the report shows (the pick is the best full-budget trial, and each baseline
is a trial). The list: each input alone (`pick` everywhere) under each allowed convention, and each uniform baseline
(every group the same method at its declared defaults) under each allowed convention; each of them under each preset
variant (`SearchSpace.preset_variants`) where tasks list several intensity presets.

The guarantee needs every baseline to run on the full budget: it holds when the search has at least as many trials
as baselines and a single budget (Hyperband starts the initial design on its lowest budget).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ConfigSpace import Configuration

from search.space import SearchSpace

UNIFORM_METHODS = ("linear", "task_arithmetic", "ties", "slerp")  # the paper's uniform baselines
DEFAULT_CONVENTION = "sam"  # the convention of an input whose training convention is not recorded


def trained_convention(name: str, conventions: Mapping[str, str]) -> str:
    """The convention input `name` was trained under: the one it is scored under wherever it is shown alone."""
    return conventions.get(name, DEFAULT_CONVENTION)


@dataclass(frozen=True)
class Baseline:
    """One configuration compared against: `row` is where the report shows it (an input's name or `uniform X`)."""

    row: str
    normalization: str
    presets: dict[str, str]  # task -> intensity preset, for the tasks that list several
    config: Configuration


def _alone(space: SearchSpace, name: str, normalization: str, presets: dict[str, str]) -> Configuration | None:
    """Input `name` unchanged: `pick` it, else linear with all weight on it; None when neither is searched."""
    if "pick" in space.spec.methods:
        return space.uniform("pick", {"model": name}, normalization, presets)
    if "linear" in space.spec.methods:
        weights = {i: 1.0 if i == name else 0.0 for i in space.inputs}
        return space.uniform("linear", {"weights": weights}, normalization, presets)
    return None


def baselines(space: SearchSpace, conventions: Mapping[str, str]) -> list[Baseline]:
    """Every baseline of a search in `space`, inputs first (each under its training convention first)."""
    allowed = list(space.spec.normalizations)
    variants = space.preset_variants()
    result: list[Baseline] = []
    for name in space.inputs:
        own = trained_convention(name, conventions)
        for normalization in sorted(allowed, key=lambda n: n != own):
            for presets in variants:
                config = _alone(space, name, normalization, presets)
                if config is not None:
                    result.append(Baseline(name, normalization, presets, config))
    for method in UNIFORM_METHODS:
        if method in space.spec.methods:
            result += [
                Baseline(f"uniform {method}", n, presets, space.uniform(method, normalization=n, presets=presets))
                for n in allowed
                for presets in variants
            ]
    return result


def initial_configurations(
    space: SearchSpace, conventions: Mapping[str, str], lambdas: Sequence[float]
) -> list[Configuration]:
    """The informed start of a search: every baseline (above), then task arithmetic and TIES at each of `lambdas`
    under the first normalisation searched, then each fine-tune plus `lambda` of every other fine-tune's task vector
    (task arithmetic, λ = 1, per-model weights, under that fine-tune's training convention: a specialist that
    borrows a little from the others). Methods not in the space are left out, repeats kept once."""
    allowed = set(space.spec.methods)
    configs = [b.config for b in baselines(space, conventions)]
    for method in ("task_arithmetic", "ties"):
        if method in allowed:
            configs += [space.uniform(method, {"lambda": float(value)}) for value in lambdas]
    if "task_arithmetic" in allowed and len(space.models) > 1:
        for primary in space.inputs[1:]:
            convention = trained_convention(primary, conventions)
            if convention not in space.spec.normalizations:
                continue
            for value in lambdas:
                weights = {name: 1.0 if name == primary else float(value) for name in space.inputs[1:]}
                configs.append(space.uniform("task_arithmetic", {"lambda": 1.0, "weights": weights}, convention))
    return list(dict.fromkeys(configs))  # keep order, drop repeats
