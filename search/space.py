"""The search space: layer groups x the merge registry's parameter declarations, as a ConfigSpace.

Hyperparameter names say where they act (`/` separates the group from what is chosen for it):

- `granularity/encoder|prompt|decoder` — only when more than one value is searched;
- `preprocessing/normalization` — only when both conventions are searched;
- `preset/<task>` — a task's intensity preset, only for a task that lists more than one (the window decides what
  the model can see: a target below the window is invisible to every merge);
- `<group>/method` — one per layer group; a group that exists only at some granularities is conditioned on those;
- `<group>/<method>.<param>` and, for a per-input (or per-model) float, `<group>/<method>.<param>.<input>` — active
  only when the group's method is that method (`pick`'s model is a categorical over the input names).

Two structures (`SpaceSpec.structure`). `flat` is the paper's: every group its own method and parameters. `structured`
adds `global/method` and `global/<method>.<param>...`, which every group takes unless its `<group>/own` is `yes`, which
activates that group's own method and parameters (random designs draw `yes` with probability `OWN_WEIGHT`): one
merge for the whole model first, refined group by group where the data asks for it, so a few trials cover the
handful of global dimensions before the hundreds of per-group ones.

A configuration maps to a `Recipe` and back, so what SMAC proposes is exactly what a person can read and replay.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ConfigSpace import Categorical, Configuration, ConfigurationSpace, EqualsCondition, Float, InCondition
from ConfigSpace.hyperparameters import Hyperparameter

from search.architectures import SamArchitecture
from search.groups import Granularity, layer_groups
from search.merge import FloatParam, InputChoice, MergeMethod, get_method
from search.recipe import GranularitySpec, GroupEntry, InputModel, Preprocessing, Recipe
from service.errors import unknown_name
from service.imaging import NORMALIZATION_NAMES

COMPONENTS = ("encoder", "prompt", "decoder")
Structure = Literal["flat", "structured"]
STRUCTURES: tuple[str, ...] = get_args(Structure)
GLOBAL = "global"  # the structured space's prefix for the merge every group takes unless it has its own
OWN_WEIGHT = 0.2  # how often a random structured configuration gives a group its own merge


def _plain(value: Any) -> Any:
    """ConfigSpace hands back numpy scalars; recipes and JSON want Python ones."""
    return value.item() if hasattr(value, "item") else value


@dataclass(frozen=True)
class SpaceSpec:
    """What is searched: granularity values per component, methods, the normalisations allowed and the intensity
    presets of each task that lists several."""

    granularity: Mapping[str, Sequence[int]]  # component -> values (one value: fixed)
    methods: Sequence[str]
    normalizations: Sequence[str] = NORMALIZATION_NAMES
    structure: str = "flat"
    presets: Mapping[str, Sequence[str]] = field(default_factory=dict)  # task -> its presets (two or more)

    def __post_init__(self) -> None:
        if self.structure not in STRUCTURES:
            raise ValueError(unknown_name("search space structure", self.structure, STRUCTURES))


class SearchSpace:
    """The ConfigSpace of one search, and the two-way map between its configurations and merge recipes."""

    def __init__(
        self, arch: SamArchitecture, base: InputModel, models: Sequence[InputModel], spec: SpaceSpec, seed: int = 0
    ) -> None:
        self.arch = arch
        self.base = base
        self.models = list(models)
        self.inputs = [base.name, *(m.name for m in models)]
        self.spec = spec
        self.seed = seed
        self.methods = [get_method(name) for name in spec.methods]  # unknown names fail listing the valid ones
        self.space = ConfigurationSpace(seed=seed)
        self._groups_at: dict[Granularity, list[str]] = {}
        self._build()

    # ----------------------------------------------------------------------------------------------------------
    def granularities(self) -> list[Granularity]:
        g = self.spec.granularity
        return [Granularity(*values) for values in itertools.product(*(g[c] for c in COMPONENTS))]

    def _build(self) -> None:
        searched = {c: list(self.spec.granularity[c]) for c in COMPONENTS if len(self.spec.granularity[c]) > 1}
        parents = {c: Categorical(f"granularity/{c}", values, default=values[0]) for c, values in searched.items()}
        hyperparameters: list[Any] = list(parents.values())
        conditions: list[Any] = []
        if len(self.spec.normalizations) > 1:
            hyperparameters.append(Categorical("preprocessing/normalization", list(self.spec.normalizations)))
        hyperparameters += [Categorical(f"preset/{task}", list(names)) for task, names in self.spec.presets.items()]
        # Where each group exists: component -> granularity values at which it is one of the groups.
        where: dict[str, tuple[str, set[int]]] = {}
        order: list[str] = []
        for granularity in self.granularities():
            names = [g.name for g in layer_groups(self.arch, granularity)]
            self._groups_at[granularity] = names
            for group in layer_groups(self.arch, granularity):
                component = {"image_encoder": "encoder", "prompt_encoder": "prompt", "mask_decoder": "decoder"}[
                    group.component
                ]
                if group.name not in where:
                    where[group.name] = (component, set())
                    order.append(group.name)
                where[group.name][1].add(getattr(granularity, component))
        structured = self.spec.structure == "structured"
        if structured:
            self._add_method(GLOBAL, hyperparameters, conditions)
        for name in order:
            component, values = where[name]
            top = method = self._add_method(name, hyperparameters, conditions)
            if structured:  # the group's own merge, active when it has one
                top = Categorical(f"{name}/own", ["no", "yes"], default="no", weights=[1 - OWN_WEIGHT, OWN_WEIGHT])
                hyperparameters.append(top)
                conditions.append(EqualsCondition(method, top, "yes"))
            if component in parents and values != set(searched[component]):
                conditions.append(InCondition(top, parents[component], sorted(values)))
        self.space.add(hyperparameters)
        self.space.add(conditions)

    def _add_method(self, prefix: str, hyperparameters: list[Any], conditions: list[Any]) -> Hyperparameter:
        """`prefix/method` and each method's parameters, active when it is chosen; returns the method's
        hyperparameter."""
        names = [m.name for m in self.methods]
        method = Categorical(f"{prefix}/method", names, default=names[0])
        hyperparameters.append(method)
        for merge_method in self.methods:
            for child in self._method_hyperparameters(prefix, merge_method):
                hyperparameters.append(child)
                conditions.append(EqualsCondition(child, method, merge_method.name))
        return method

    def _method_hyperparameters(self, group: str, method: MergeMethod) -> list[Hyperparameter]:
        result: list[Hyperparameter] = []
        for p in method.params:
            prefix = f"{group}/{method.name}.{p.name}"
            if isinstance(p, InputChoice):
                result.append(Categorical(prefix, self.inputs, default=self.inputs[0]))
            elif (keys := p.keys(self.inputs)) is not None:
                result += [Float(f"{prefix}.{i}", (p.low, p.high), default=p.default) for i in keys]
            else:
                result.append(Float(prefix, (p.low, p.high), default=p.default))
        return result

    # ----------------------------------------------------------------------------------------------------------
    def to_recipe(self, config: Configuration | Mapping[str, Any]) -> Recipe:
        """The merge recipe of a configuration (its active hyperparameters)."""
        values = {k: _plain(v) for k, v in dict(config).items()}
        granularity = Granularity(*(values.get(f"granularity/{c}", self.spec.granularity[c][0]) for c in COMPONENTS))
        normalization = values.get("preprocessing/normalization", self.spec.normalizations[0])
        groups = []
        for name in self._groups_at[granularity]:
            prefix = name if self.spec.structure == "flat" or values.get(f"{name}/own") == "yes" else GLOBAL
            method = get_method(values[f"{prefix}/method"])
            params: dict[str, Any] = {}
            for p in method.params:
                key = f"{prefix}/{method.name}.{p.name}"
                if isinstance(p, FloatParam) and (keys := p.keys(self.inputs)) is not None:
                    params[p.name] = {i: float(values[f"{key}.{i}"]) for i in keys}
                else:
                    params[p.name] = values[key] if isinstance(p, InputChoice) else float(values[key])
            groups.append(GroupEntry(group=name, method=method.name, params=params))
        return Recipe(
            base=self.base,
            models=self.models,
            architecture=self.arch.name,
            preprocessing=Preprocessing(
                normalization=normalization,
                presets={task: values[f"preset/{task}"] for task in self.spec.presets} or None,
            ),
            granularity=GranularitySpec(**{c: getattr(granularity, c) for c in COMPONENTS}),
            seed=self.seed,
            groups=groups,
        )

    def configuration(
        self,
        granularity: Granularity,
        normalization: str,
        entries: Mapping[str, tuple[str, Mapping[str, Any]]],
        presets: Mapping[str, str] | None = None,
    ) -> Configuration:
        """The configuration of one method per group: `entries` maps group -> (method, recipe-form params); a
        parameter left out takes its declared default, a task left out of `presets` its first preset. In the
        structured space the first group's merge is the global one and only groups that differ from it get their
        own. Raises ValueError when it is not in this space."""
        values: dict[str, Any] = {f"preset/{t}": (presets or {}).get(t, p[0]) for t, p in self.spec.presets.items()}
        for c in COMPONENTS:
            if len(self.spec.granularity[c]) > 1:
                values[f"granularity/{c}"] = getattr(granularity, c)
        if len(self.spec.normalizations) > 1:
            values["preprocessing/normalization"] = normalization
        names = self._groups_at[granularity]
        filled = {}
        for name in names:
            method_name, given = entries[name]
            filled[name] = (method_name, {**get_method(method_name).defaults(self.inputs), **given})
        shared = filled[names[0]] if self.spec.structure == "structured" else None
        if shared is not None:
            values.update(self._method_values(GLOBAL, *shared))
        for name in names:
            if shared is None:
                values.update(self._method_values(name, *filled[name]))
            elif filled[name] == shared:
                values[f"{name}/own"] = "no"
            else:
                values.update({f"{name}/own": "yes", **self._method_values(name, *filled[name])})
        return Configuration(self.space, values=values)

    def _method_values(self, prefix: str, method_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The hyperparameter values under `prefix` of one method with its recipe-form `params`."""
        values: dict[str, Any] = {f"{prefix}/method": method_name}
        for p in get_method(method_name).params:
            key = f"{prefix}/{method_name}.{p.name}"
            if isinstance(p, FloatParam) and (keys := p.keys(self.inputs)) is not None:
                values.update({f"{key}.{i}": float(params[p.name][i]) for i in keys})
            else:
                values[key] = params[p.name]
        return values

    def uniform(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        normalization: str | None = None,
        presets: Mapping[str, str] | None = None,
    ) -> Configuration:
        """One method with the same parameters in every group, at the first granularity searched."""
        granularity = self.granularities()[0]
        entries = {name: (method, dict(params or {})) for name in self._groups_at[granularity]}
        return self.configuration(granularity, normalization or self.spec.normalizations[0], entries, presets)

    def preset_variants(self) -> list[dict[str, str]]:
        """Enough preset choices that each task is measured under each of its presets: variant k gives every
        searched task its k-th preset (cycling a shorter list). A task's Dice depends on its own preset only, so
        the variants hold every (task, preset) score without the product of all combinations."""
        count = max((len(p) for p in self.spec.presets.values()), default=1)
        return [{t: p[k % len(p)] for t, p in self.spec.presets.items()} for k in range(count)]
