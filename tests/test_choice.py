"""The choice rule (`search.choice`): the paired case bootstrap against its exact distribution, the weight distance
against its formula, `nearest` preferring an input or baseline within noise, and the references it measures from."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from search.checkpoints import load_checkpoint
from search.choice import choose, lead_interval, objective, relative_distance
from search.merge.engine import MergeEngine
from search.optimize import reference_states
from search.recipe import InputModel
from search.space import SearchSpace, SpaceSpec
from tests.conftest import ZOO


def test_objective_follows_the_pareto_pick_rules():
    dice = {"a": 0.5, "b": 0.9}
    assert objective(dice, "mean") == pytest.approx(0.7)
    assert objective(dice, "worst") == 0.5 and objective(dice, "b") == 0.9
    arrays = {"a": np.array([0.1, 0.8]), "b": np.array([0.3, 0.2])}
    assert objective(arrays, "worst").tolist() == [0.1, 0.2]


def test_the_lead_interval_is_the_exact_paired_bootstrap_of_two_cases():
    # Two cases, paired: a resample's mean lead is d1 (p 1/4), (d1 + d2) / 2 (p 1/2) or d2 (p 1/4), so the 2.5 and
    # 97.5 percentiles of 2000 draws are the two cases' leads.
    best = {"t": {"c1": 0.9, "c2": 0.6}}
    other = {"t": {"c1": 0.8, "c2": 0.65}}
    low, high = lead_interval(best, other, "t")
    assert low == pytest.approx(-0.05) and high == pytest.approx(0.1)
    # Better on both cases: the whole interval is above zero (the best's lead is beyond noise).
    assert lead_interval(best, {"t": {"c1": 0.7, "c2": 0.5}}, "t")[0] == pytest.approx(0.1)


def test_the_lead_interval_resamples_within_each_task_for_the_mean_rule():
    best = {"a": {"x": 0.6, "y": 0.8}, "b": {"z": 0.5, "w": 0.5}}
    other = {"a": {"x": 0.5, "y": 0.7}, "b": {"z": 0.6, "w": 0.2}}
    # Every equally likely resample, enumerated: each task's leads averaged, then the mean over tasks.
    leads_a, leads_b = [0.1, 0.1], [-0.1, 0.3]
    means = [
        (np.mean(ia) + np.mean(ib)) / 2
        for ia in itertools.product(leads_a, repeat=2)
        for ib in itertools.product(leads_b, repeat=2)
    ]
    low, high = lead_interval(best, other, "mean", resamples=20000)
    assert low == pytest.approx(min(means), abs=1e-9) and high == pytest.approx(max(means), abs=1e-9)


def test_relative_distance_is_the_norm_ratio_over_floating_tensors():
    ref = {"w": torch.tensor([3.0, 4.0]), "b": torch.tensor([0.0]), "n": torch.tensor([7])}
    state = {"w": torch.tensor([3.0, 5.0]), "b": torch.tensor([1.0]), "n": torch.tensor([0])}
    assert relative_distance(state, ref) == pytest.approx(np.sqrt(2.0) / 5.0)
    assert relative_distance(ref, ref) == 0.0


def _entry(trial: int, cases: dict[str, float], weight: float) -> dict:
    return {"trial": trial, "dice": {"t": float(np.mean(list(cases.values())))}, "cases": {"t": cases}, "w": weight}


def test_nearest_prefers_an_input_within_noise_and_departs_only_beyond_it():
    reference = {"w": torch.tensor([1.0, 0.0])}
    merged = lambda entry: {"w": torch.tensor([1.0, entry["w"]])}  # noqa: E731
    baseline = _entry(0, {"c1": 0.70, "c2": 0.80}, 0.0)
    near = _entry(1, {"c1": 0.72, "c2": 0.79}, 0.1)
    best = _entry(2, {"c1": 0.90, "c2": 0.78}, 0.9)
    entries = [baseline, near, best]
    chosen, record = choose(entries, best, "t", "nearest", merged, [reference], floor=0.75)
    # The best beats the baseline on one case and loses on the other: within noise, and at distance 0.
    assert chosen is baseline and record["within_noise"] == [0, 1, 2] and record["distance"]["0"] == 0.0
    assert choose(entries, best, "t", "best", merged, [reference])[0] is best
    # A baseline the best beats on every case is beyond noise: the nearest of the rest (not the best) is chosen.
    worse = _entry(0, {"c1": 0.60, "c2": 0.70}, 0.0)
    chosen, record = choose([worse, near, best], best, "t", "nearest", merged, [reference], floor=0.65)
    assert chosen is near and record["within_noise"] == [1, 2]
    # Nothing below the best baseline's score is chosen, however near.
    chosen, _ = choose([baseline, near, best], best, "t", "nearest", merged, [reference], floor=0.756)
    assert chosen is best


def test_the_uniform_references_survive_later_merges():
    # A merge returns views of the engine's one output buffer: the references must be copies, or every distance
    # would be measured to the last merge (all 0 once a candidate is merged).
    names = {
        "base": "sam_tiny.pth",
        "ct_specialist": "ct_specialist_tiny.pt",
        "mr_specialist": "mr_specialist_tiny.pth",
    }
    engine = MergeEngine.from_checkpoints((n, load_checkpoint(ZOO / f)) for n, f in names.items())
    inputs = [InputModel(name=n, path=f) for n, f in names.items()]
    spec = SpaceSpec({"encoder": [2], "prompt": [1], "decoder": [2]}, ["linear", "ties", "pick"], ("sam",))
    space = SearchSpace(engine.arch, inputs[0], inputs[1:], spec)
    states = reference_states(engine, space, {})
    assert len(states) == 3 + 2  # each input, then uniform linear and uniform ties
    linear = engine.merge_recipe(space.to_recipe(space.uniform("linear")))
    kept = {k: v.clone() for k, v in linear.items()}
    engine.merge_recipe(space.to_recipe(space.uniform("pick", {"model": "mr_specialist"})))
    assert relative_distance(states[3], kept) == 0.0 and relative_distance(states[3], states[2]) > 0.0
