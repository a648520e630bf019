"""Merge methods against their formulas, each recomputed independently in numpy float64.

Inputs are small seeded random tensors; a Packing of several segments must behave like each tensor merged alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from search.errors import MergeError
from search.merge import METHODS, Packing, get_method
from search.merge.packing import tensor_key

NAMES = ["sam", "a", "b"]
MANY_NAMES = ["sam", "a", "b", "c"]


# ---------------------------------------------------------------- helpers and numpy references


def slices(lengths):
    start = 0
    for length in lengths:
        yield slice(start, start + length)
        start += length


def tensors(*arrays, dtype=torch.float64):
    return [torch.tensor(np.asarray(a), dtype=dtype) for a in arrays]


def f64(x: torch.Tensor) -> np.ndarray:
    return x.detach().to(torch.float64).numpy()


def merge(name, base, models, packing=None, **kwargs):
    packing = packing or Packing.single(base.numel(), 7)
    return get_method(name)(base, models, packing, **kwargs)


def lam(value):
    return {"lambda": value}


def ref_linear(inputs, weights):
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return sum(wi * x for wi, x in zip(w, inputs, strict=True))


def ref_task_arithmetic(base, models, scale):
    return base + scale * sum(m - base for m in models)


def ref_disjoint_mean(taus, weights=None):
    """Σ_{t agrees} w_t τ_t / Σ_{t agrees} w_t entry by entry (mergekit's divisor; all w_t = 1: the count)."""
    w = np.ones(len(taus)) if weights is None else np.asarray(weights, dtype=np.float64)
    stacked = np.stack(taus) * w[:, None]
    elected = np.sign(stacked.sum(0))
    agree = (np.sign(stacked) == elected) & (stacked != 0)
    divisor = (agree * w[:, None]).sum(0)
    return np.where(divisor > 0, (stacked * agree).sum(0) / np.where(divisor > 0, divisor, 1.0), 0.0)


def ref_trim(tau, density):
    """Keep the round-half-up(density·n) largest magnitudes; entries tied with the threshold are all kept."""
    n = tau.size
    k = math.floor(n * density + 0.5)
    if k == 0:
        return np.zeros_like(tau)
    threshold = np.sort(np.abs(tau))[n - k]
    return np.where(np.abs(tau) >= threshold, tau, 0.0)


def ref_ties(base, models, density, scale, lengths):
    out = np.empty_like(base)
    for sl in slices(lengths):
        trimmed = [ref_trim(m[sl] - base[sl], density) for m in models]
        out[sl] = base[sl] + scale * ref_disjoint_mean(trimmed)
    return out


def ref_slerp2(x1, x2, t):
    cos = x1 @ x2 / (np.linalg.norm(x1) * np.linalg.norm(x2))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    return np.sin((1 - t) * omega) / np.sin(omega) * x1 + np.sin(t * omega) / np.sin(omega) * x2


def karcher_gradient(p, units, weights):
    """Σ w_i log_p(u_i) on the unit sphere; zero at the weighted spherical mean."""
    gradient = np.zeros_like(p)
    for w, u in zip(weights, units, strict=True):
        cos = np.clip(u @ p, -1.0, 1.0)
        angle = np.arccos(cos)
        scale = angle / np.sin(angle) if angle > 1e-12 else 1.0
        gradient += w * scale * (u - cos * p)
    return gradient


def ref_model_stock(base, models, lengths):
    out = np.empty_like(base)
    n = len(models)
    for sl in slices(lengths):
        taus = [m[sl] - base[sl] for m in models]
        if n == 1:
            cos = 1.0
        else:
            pairs = []
            for i in range(n):
                for j in range(n):
                    if i != j:
                        ni, nj = np.linalg.norm(taus[i]), np.linalg.norm(taus[j])
                        pairs.append(taus[i] @ taus[j] / (ni * nj) if ni > 0 and nj > 0 else 0.0)
            cos = float(np.mean(pairs))
        t = min(max(n * cos / (1 + (n - 1) * cos), 0.0), 1.0)
        mean = np.mean([m[sl] for m in models], axis=0)
        out[sl] = t * mean + (1 - t) * base[sl]
    return out


def correlated(rng, n, count, spread=0.5, scales=None):
    """`count` vectors sharing a common direction (so angles are moderate), with different norms."""
    common = rng.normal(size=n)
    scales = scales or [1.0 + 0.5 * i for i in range(count)]
    return [s * (common + spread * rng.normal(size=n)) for s in scales]


# ---------------------------------------------------------------- linear


def test_linear_is_normalised_weighted_sum():
    rng = np.random.default_rng(0)
    inputs = [rng.normal(size=300) for _ in range(3)]
    base, *models = tensors(*inputs)
    for weights in [(1.0, 1.0, 1.0), (0.2, 0.5, 0.3), (2.0, 1.0, 0.0), (0.01, 0.0, 0.03)]:
        out = merge("linear", base, models, weights=weights)
        np.testing.assert_allclose(f64(out), ref_linear(inputs, weights), rtol=1e-12, atol=1e-14)


def test_linear_float32_matches_float64_reference():
    rng = np.random.default_rng(1)
    inputs = tensors(*[rng.normal(size=500) for _ in range(3)], dtype=torch.float32)
    out = merge("linear", inputs[0], inputs[1:], weights=(0.1, 0.6, 0.3))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(f64(out), ref_linear([f64(x) for x in inputs], (0.1, 0.6, 0.3)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_linear_one_hot_weights_give_that_input_exactly(index):
    rng = np.random.default_rng(2)
    inputs = tensors(*[rng.normal(size=200) for _ in range(3)], dtype=torch.float32)
    weights = tuple(1.0 if i == index else 0.0 for i in range(3))
    out = merge("linear", inputs[0], inputs[1:], weights=weights)
    np.testing.assert_array_equal(out.numpy(), inputs[index].numpy())


def test_linear_all_zero_weights_is_a_merge_error():
    base, a = tensors(np.ones(4), np.zeros(4))
    with pytest.raises(MergeError, match="zero"):
        merge("linear", base, [a], weights=(0.0, 0.0))


# ---------------------------------------------------------------- task arithmetic


@pytest.mark.parametrize("scale", [0.0, 0.3, 0.5, 1.0])
def test_task_arithmetic_is_base_plus_scaled_sum_of_task_vectors(scale):
    rng = np.random.default_rng(3)
    base, a, b = (rng.normal(size=400) for _ in range(3))
    out = merge("task_arithmetic", *tensors(base), tensors(a, b), **lam(scale))
    np.testing.assert_allclose(f64(out), ref_task_arithmetic(base, [a, b], scale), rtol=1e-12, atol=1e-13)


def test_task_arithmetic_lambda_zero_is_base_exactly():
    rng = np.random.default_rng(4)
    base, a, b = tensors(*[rng.normal(size=400) for _ in range(3)], dtype=torch.float32)
    out = merge("task_arithmetic", base, [a, b], **lam(0.0))
    np.testing.assert_array_equal(out.numpy(), base.numpy())


@pytest.mark.parametrize("weights", [(1.0, 0.2), (0.0, 1.0), (0.35, 0.8)])
def test_task_arithmetic_weighs_each_task_vector(weights):
    rng = np.random.default_rng(14)
    base, a, b = (rng.normal(size=400) for _ in range(3))
    out = merge("task_arithmetic", *tensors(base), tensors(a, b), weights=weights, **lam(0.9))
    expected = base + 0.9 * (weights[0] * (a - base) + weights[1] * (b - base))
    np.testing.assert_allclose(f64(out), expected, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("weights", [(1.0, 0.3, 0.6), (0.05, 0.0, 0.9), (0.5, 0.5, 0.5)])
def test_ties_divides_by_the_sum_of_the_agreeing_weights(weights):
    rng = np.random.default_rng(15)
    base = rng.normal(size=1000)
    models = [base + rng.normal(size=1000) * 0.1 for _ in range(3)]
    out = merge("ties", *tensors(base), tensors(*models), density=0.4, weights=weights, **lam(0.8))
    trimmed = [ref_trim(m - base, 0.4) for m in models]  # a positive weight does not change a tensor's ranking
    expected = base + 0.8 * ref_disjoint_mean(trimmed, weights)
    np.testing.assert_allclose(f64(out), expected, rtol=1e-12, atol=1e-13)
    # Equal weights cancel out: the paper's TIES (divided by the count of agreeing entries).
    if len(set(weights)) == 1:
        plain = merge("ties", *tensors(base), tensors(*models), density=0.4, **lam(0.8))
        np.testing.assert_allclose(f64(out), f64(plain), rtol=1e-12, atol=1e-13)


def test_per_model_weights_name_the_fine_tunes_only():
    kwargs = get_method("ties").resolve({"weights": {"b": 0.5, "a": 0.25}}, NAMES, where="t")
    assert kwargs["weights"] == (0.25, 0.5)
    assert get_method("task_arithmetic").defaults(NAMES)["weights"] == {"a": 1.0, "b": 1.0}
    with pytest.raises(MergeError, match="weights must give a value for each fine-tuned model \\(a, b\\)"):
        get_method("task_arithmetic").resolve({"weights": {"sam": 1.0, "a": 1.0, "b": 1.0}}, NAMES, where="t")


# ---------------------------------------------------------------- TIES


@pytest.mark.parametrize("density", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_ties_matches_reference_continuous(density):
    rng = np.random.default_rng(5)
    base = rng.normal(size=1000)
    models = [base + rng.normal(size=1000) * 0.1 for _ in range(3)]
    out = merge("ties", *tensors(base), tensors(*models), density=density, **lam(0.7))
    np.testing.assert_allclose(f64(out), ref_ties(base, models, density, 0.7, (1000,)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("density", [0.25, 0.3, 0.5, 0.8])
def test_ties_matches_reference_with_ties_and_several_tensors(density):
    # Values on a coarse grid: task vectors are exact in float32 and their magnitudes tie a lot.
    rng = np.random.default_rng(6)
    lengths = (10, 37, 1, 200)
    n = sum(lengths)
    base = rng.integers(-8, 9, size=n) / 4.0
    models = [base + rng.integers(-4, 5, size=n) / 8.0 for _ in range(3)]
    packing = Packing(lengths, (1, 2, 3, 4))
    out = merge(
        "ties",
        *tensors(base, dtype=torch.float32),
        tensors(*models, dtype=torch.float32),
        packing,
        density=density,
        **lam(0.6),
    )
    np.testing.assert_allclose(f64(out), ref_ties(base, models, density, 0.6, lengths), rtol=1e-6, atol=1e-6)


def test_ties_keeps_round_half_up_of_density_times_length():
    # 10 · 0.25 = 2.5 → 3 entries (round half to even would keep 2).
    base = np.zeros(10)
    model = np.arange(1.0, 11.0) * np.array([1, -1] * 5)
    out = merge("ties", *tensors(base), tensors(model), density=0.25, **lam(1.0))
    np.testing.assert_array_equal(f64(out), np.where(np.abs(model) >= 8, model, 0.0))


def test_ties_keeps_every_entry_tied_with_the_threshold():
    base = np.zeros(10)
    model = np.array([5.0, -3.0, 3.0, 3.0, 1.0, 0.5, 0.25, 0.0, -0.1, 0.2])
    # round(0.2 · 10) = 2 → threshold is the 2nd largest magnitude, 3, held by three entries.
    out = merge("ties", *tensors(base), tensors(model), density=0.2, **lam(1.0))
    np.testing.assert_array_equal(f64(out), [5.0, -3.0, 3.0, 3.0, 0, 0, 0, 0, 0, 0])


def test_ties_sign_election_and_disjoint_mean_by_hand():
    base = np.array([1.0, 1.0, 1.0, 1.0])
    taus = [np.array([2.0, -1.0, 1.0, 0.0]), np.array([-1.0, 3.0, -1.0, 0.0]), np.array([0.5, -1.0, 0.0, -4.0])]
    # entry 0: sum 1.5 > 0 → mean(2, 0.5) = 1.25; entry 1: sum 1 > 0 → 3; entry 2: sum 0 → nothing elected;
    # entry 3: only one nonzero → -4.
    out = merge("ties", *tensors(base), tensors(*[base + t for t in taus]), density=1.0, **lam(0.5))
    np.testing.assert_allclose(f64(out), base + 0.5 * np.array([1.25, 3.0, 0.0, -4.0]), rtol=1e-15)


@pytest.mark.parametrize("scale", [0.3, 1.0])
def test_ties_full_density_single_model_equals_task_arithmetic(scale):
    rng = np.random.default_rng(7)
    base, a = tensors(rng.normal(size=300), rng.normal(size=300))
    ties = merge("ties", base, [a], density=1.0, **lam(scale))
    arithmetic = merge("task_arithmetic", base, [a], **lam(scale))
    np.testing.assert_allclose(f64(ties), f64(arithmetic), rtol=1e-15)


def test_ties_zero_density_is_base():
    rng = np.random.default_rng(8)
    base, a, b = tensors(*[rng.normal(size=300) for _ in range(3)], dtype=torch.float32)
    out = merge("ties", base, [a, b], Packing((100, 200), (1, 2)), density=0.0, **lam(1.0))
    np.testing.assert_array_equal(out.numpy(), base.numpy())


# ---------------------------------------------------------------- DARE


def dare_single(base, tau, density, scale, packing):
    """DARE with one fine-tune; returns the output and the mask of kept entries read from the output."""
    out = f64(merge("dare", *tensors(base), tensors(base + tau), packing, density=density, **lam(scale)))
    kept_value = base + scale * tau / density
    is_kept = np.isclose(out, kept_value, rtol=1e-12, atol=0)
    is_dropped = out == base
    # Every entry is either dropped (exactly the base) or kept and rescaled by 1/density.
    assert np.all(is_kept ^ is_dropped)
    return out, is_kept


def test_dare_drops_and_rescales_survivors():
    rng = np.random.default_rng(9)
    n = 100_000
    base, tau = rng.normal(size=n), rng.normal(size=n) * 0.01
    for density in (0.1, 0.3, 0.7):
        _, kept = dare_single(base, tau, density, 0.8, Packing.single(n, tensor_key(0, "w")))
        assert abs(kept.mean() - density) < 0.03 * density


def test_dare_is_deterministic_for_a_key_and_varies_with_it():
    rng = np.random.default_rng(10)
    n = 20_000
    base, tau = rng.normal(size=n), rng.normal(size=n) * 0.01
    key = tensor_key(0, "image_encoder.blocks.0.attn.qkv.weight")
    first = dare_single(base, tau, 0.5, 0.5, Packing.single(n, key))[1]
    again = dare_single(base, tau, 0.5, 0.5, Packing.single(n, key))[1]
    np.testing.assert_array_equal(first, again)
    for other in (tensor_key(1, "image_encoder.blocks.0.attn.qkv.weight"), tensor_key(0, "image_encoder.neck.0")):
        mask = dare_single(base, tau, 0.5, 0.5, Packing.single(n, other))[1]
        # Independent masks at density 0.5 disagree on about half the entries.
        assert 0.45 < np.mean(mask != first) < 0.55


def test_dare_two_models_draw_independent_masks_and_add_up():
    rng = np.random.default_rng(11)
    n = 50_000
    base = rng.normal(size=n)
    tau_a, tau_b = rng.normal(size=n) * 0.01, rng.normal(size=n) * 0.01
    packing = Packing.single(n, tensor_key(0, "w"))
    density, scale = 0.4, 0.5
    only_a = f64(merge("dare", *tensors(base), tensors(base + tau_a, base), packing, density=density, **lam(scale)))
    only_b = f64(merge("dare", *tensors(base), tensors(base, base + tau_b), packing, density=density, **lam(scale)))
    both = f64(
        merge("dare", *tensors(base), tensors(base + tau_a, base + tau_b), packing, density=density, **lam(scale))
    )
    kept_a, kept_b = only_a != base, only_b != base
    np.testing.assert_allclose(only_a[kept_a], (base + scale * tau_a / density)[kept_a], rtol=1e-12)
    np.testing.assert_allclose(only_b[kept_b], (base + scale * tau_b / density)[kept_b], rtol=1e-12)
    expected = base + scale * (tau_a * kept_a + tau_b * kept_b) / density
    np.testing.assert_allclose(both, expected, rtol=1e-12, atol=1e-14)
    assert abs(np.mean(kept_a & kept_b) - density**2) < 0.01
    assert abs(kept_a.mean() - density) < 0.01 and abs(kept_b.mean() - density) < 0.01


def test_dare_does_not_depend_on_packing():
    rng = np.random.default_rng(12)
    lengths = (3000, 17, 1200)
    keys = tuple(tensor_key(0, name) for name in ("x.weight", "x.bias", "y.weight"))
    n = sum(lengths)
    base, a, b = tensors(*[rng.normal(size=n) for _ in range(3)], dtype=torch.float32)
    packed = merge("dare", base, [a, b], Packing(lengths, keys), density=0.3, **lam(0.7))
    for sl, key in zip(slices(lengths), keys, strict=True):
        alone = merge(
            "dare", base[sl], [a[sl], b[sl]], Packing.single(sl.stop - sl.start, key), density=0.3, **lam(0.7)
        )
        np.testing.assert_array_equal(packed[sl].numpy(), alone.numpy())


def test_dare_full_density_is_task_arithmetic_and_zero_density_is_base():
    rng = np.random.default_rng(13)
    base, a, b = tensors(*[rng.normal(size=500) for _ in range(3)])
    full = merge("dare", base, [a, b], density=1.0, **lam(0.6))
    np.testing.assert_allclose(f64(full), f64(merge("task_arithmetic", base, [a, b], **lam(0.6))), rtol=1e-15)
    none = merge("dare", base, [a, b], density=0.0, **lam(0.6))
    np.testing.assert_array_equal(none.numpy(), base.numpy())
    assert np.isfinite(none.numpy()).all()


# ---------------------------------------------------------------- DARE-TIES


def test_dare_ties_is_registered_with_density_lambda_and_weights():
    method = get_method("dare_ties")
    kwargs = method.resolve({}, NAMES, where="t")
    assert set(kwargs) == {"density", "lambda", "weights"} and kwargs["weights"] == (1.0, 1.0)


def test_dare_ties_full_density_equals_ties_full_density():
    rng = np.random.default_rng(14)
    base = rng.normal(size=600)
    models = [base + rng.normal(size=600) for _ in range(3)]
    out = merge("dare_ties", *tensors(base), tensors(*models), density=1.0, **lam(0.9))
    expected = base + 0.9 * ref_disjoint_mean([m - base for m in models])
    np.testing.assert_allclose(f64(out), expected, rtol=1e-12, atol=1e-14)


def test_dare_ties_divides_by_the_sum_of_the_agreeing_weights():
    rng = np.random.default_rng(16)
    n = 5000
    base = rng.normal(size=n)
    taus = [rng.normal(size=n) * 0.01 for _ in range(2)]
    packing = Packing.single(n, tensor_key(3, "w"))
    density, weights = 0.6, (0.7, 0.2)

    def kept(i):  # DARE's mask of fine-tune i, read from a run where only it differs from the base
        models = [base + taus[j] if j == i else base for j in range(2)]
        return f64(merge("dare", *tensors(base), tensors(*models), packing, density=density, **lam(1))) != base

    survivors = [taus[i] * kept(i) / density for i in range(2)]
    out = merge(
        "dare_ties",
        *tensors(base),
        tensors(*(base + t for t in taus)),
        packing,
        density=density,
        weights=weights,
        **lam(0.9),
    )
    expected = base + 0.9 * ref_disjoint_mean(survivors, weights)
    np.testing.assert_allclose(f64(out), expected, rtol=1e-12, atol=1e-14)


def test_dare_ties_elects_signs_over_the_rescaled_survivors():
    rng = np.random.default_rng(15)
    n = 20_000
    base = rng.normal(size=n)
    tau_a = rng.normal(size=n) * 0.01
    tau_b = -tau_a * rng.uniform(0.5, 2.0, size=n)  # opposite signs everywhere: consensus must pick one
    packing = Packing.single(n, tensor_key(2, "w"))
    density, scale = 0.5, 1.0
    # The masks, read from DARE runs where only one fine-tune differs from the base (same rows, same key).
    kept_a = f64(merge("dare", *tensors(base), tensors(base + tau_a, base), packing, density=density, **lam(1))) != base
    kept_b = f64(merge("dare", *tensors(base), tensors(base, base + tau_b), packing, density=density, **lam(1))) != base
    out = f64(
        merge("dare_ties", *tensors(base), tensors(base + tau_a, base + tau_b), packing, density=density, **lam(scale))
    )
    expected = base + scale * ref_disjoint_mean([tau_a * kept_a / density, tau_b * kept_b / density])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-14)
    # Where both survive, only the larger (winning) one is kept: no averaging of opposite signs.
    both = kept_a & kept_b
    winner = np.where(np.abs(tau_a) >= np.abs(tau_b), tau_a, tau_b)
    np.testing.assert_allclose((out - base)[both], (scale * winner / density)[both], rtol=1e-9)


# ---------------------------------------------------------------- SLERP


@pytest.mark.parametrize("t", [0.0, 0.1, 0.3, 0.5, 0.77, 1.0])
@pytest.mark.parametrize("spread", [0.3, 3.0])
def test_slerp_two_inputs_is_the_slerp_formula(t, spread):
    rng = np.random.default_rng(16)
    x1, x2 = correlated(rng, 400, 2, spread=spread, scales=[1.0, 2.5])
    out = merge("slerp", *tensors(x1), tensors(x2), weights=(1 - t, t))
    np.testing.assert_allclose(f64(out), ref_slerp2(x1, x2, t), rtol=1e-9, atol=1e-12)


def test_slerp_two_inputs_wide_angle():
    # 150° apart: still the arc point, not a renormalised chord.
    rng = np.random.default_rng(17)
    e1, e2 = np.linalg.qr(rng.normal(size=(300, 2)))[0].T
    x1 = 2.0 * e1
    x2 = 0.5 * (np.cos(np.radians(150)) * e1 + np.sin(np.radians(150)) * e2)
    for t in (0.25, 0.5, 0.9):
        out = merge("slerp", *tensors(x1), tensors(x2), weights=(1 - t, t))
        np.testing.assert_allclose(f64(out), ref_slerp2(x1, x2, t), rtol=1e-9, atol=1e-12)


def test_slerp_endpoints_are_the_inputs():
    rng = np.random.default_rng(18)
    x1, x2 = tensors(*correlated(rng, 300, 2), dtype=torch.float32)
    np.testing.assert_allclose(merge("slerp", x1, [x2], weights=(1.0, 0.0)).numpy(), x1.numpy(), rtol=1e-6)
    np.testing.assert_allclose(merge("slerp", x1, [x2], weights=(0.0, 1.0)).numpy(), x2.numpy(), rtol=1e-6)


def test_slerp_is_per_tensor_when_packed():
    rng = np.random.default_rng(19)
    lengths = (250, 40, 600)
    segs = [correlated(rng, n, 2, spread=s) for n, s in zip(lengths, (0.2, 1.0, 4.0), strict=True)]
    x1 = np.concatenate([s[0] for s in segs])
    x2 = np.concatenate([s[1] for s in segs])
    out = f64(merge("slerp", *tensors(x1), tensors(x2), Packing(lengths, (1, 2, 3)), weights=(0.65, 0.35)))
    for sl in slices(lengths):
        np.testing.assert_allclose(out[sl], ref_slerp2(x1[sl], x2[sl], 0.35), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("spread", [0.5, 5.0])
@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0), (0.2, 0.3, 0.5), (0.7, 0.05, 0.25)])
def test_slerp_three_inputs_is_the_weighted_karcher_mean(spread, weights):
    rng = np.random.default_rng(20)
    inputs = correlated(rng, 500, 3, spread=spread, scales=[1.0, 3.0, 0.4])
    out = f64(merge("slerp", *tensors(inputs[0]), tensors(*inputs[1:]), weights=weights))
    # The result is Σ c_i θ_i; recover c, then p = Σ c_i u_i must be the unit weighted spherical mean.
    thetas = np.stack(inputs)
    c, *_ = np.linalg.lstsq(thetas.T, out, rcond=None)
    np.testing.assert_allclose(thetas.T @ c, out, rtol=1e-10, atol=1e-12)
    norms = np.linalg.norm(thetas, axis=1)
    units = thetas / norms[:, None]
    p = c @ units
    assert abs(np.linalg.norm(p) - 1.0) < 1e-9
    w = np.asarray(weights) / sum(weights)
    assert np.linalg.norm(karcher_gradient(p, units, w)) < 1e-9


def test_slerp_three_equal_norm_inputs_point_along_the_karcher_mean():
    rng = np.random.default_rng(21)
    units = [v / np.linalg.norm(v) for v in correlated(rng, 400, 3, spread=1.0)]
    inputs = [3.0 * u for u in units]
    out = f64(merge("slerp", *tensors(inputs[0]), tensors(*inputs[1:]), weights=(0.5, 0.2, 0.3)))
    np.testing.assert_allclose(np.linalg.norm(out), 3.0, rtol=1e-9)
    assert np.linalg.norm(karcher_gradient(out / 3.0, units, (0.5, 0.2, 0.3))) < 1e-9


def test_slerp_does_not_depend_on_input_order():
    rng = np.random.default_rng(22)
    x = correlated(rng, 300, 3, spread=1.0)
    w = (0.2, 0.3, 0.5)
    reference = f64(merge("slerp", *tensors(x[0]), tensors(x[1], x[2]), weights=w))
    for order in [(1, 0, 2), (2, 0, 1), (2, 1, 0), (0, 2, 1)]:
        out = merge(
            "slerp", *tensors(x[order[0]]), tensors(x[order[1]], x[order[2]]), weights=tuple(w[i] for i in order)
        )
        np.testing.assert_allclose(f64(out), reference, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_slerp_one_hot_weights_give_that_input(index):
    rng = np.random.default_rng(23)
    x = correlated(rng, 300, 3, spread=1.0)
    weights = tuple(1.0 if i == index else 0.0 for i in range(3))
    out = merge("slerp", *tensors(x[0]), tensors(x[1], x[2]), weights=weights)
    np.testing.assert_allclose(f64(out), x[index], rtol=1e-12, atol=1e-14)


def test_slerp_duplicated_input_adds_its_weights():
    # The spherical mean of (x, x, y) with weights (w1, w2, w3) is the two-input SLERP of (x, y) at w3/(w1+w2+w3).
    rng = np.random.default_rng(24)
    x, y = correlated(rng, 300, 2, spread=1.0)
    three = merge("slerp", *tensors(x), tensors(x.copy(), y), weights=(0.2, 0.3, 0.5))
    np.testing.assert_allclose(f64(three), ref_slerp2(x, y, 0.5), rtol=1e-9, atol=1e-12)


def test_slerp_zero_norm_input_falls_back_to_linear_weights():
    rng = np.random.default_rng(25)
    zero, a, b = np.zeros(200), rng.normal(size=200), rng.normal(size=200)
    out = merge("slerp", *tensors(zero), tensors(a, b), weights=(0.2, 0.3, 0.5))
    np.testing.assert_allclose(f64(out), ref_linear([zero, a, b], (0.2, 0.3, 0.5)), rtol=1e-12, atol=1e-14)


def test_slerp_opposite_inputs_with_equal_weights_are_finite():
    # The spherical mean is undefined (Σ w_i u_i = 0): linear weights, never NaN.
    x = np.random.default_rng(26).normal(size=200)
    out = merge("slerp", *tensors(x), tensors(-x), weights=(0.5, 0.5))
    assert np.isfinite(f64(out)).all()
    np.testing.assert_allclose(f64(out), np.zeros(200), atol=1e-12)


def test_slerp_all_zero_weights_is_a_merge_error():
    base, a = tensors(np.ones(4), np.arange(4.0))
    with pytest.raises(MergeError):
        merge("slerp", base, [a], weights=(0.0, 0.0))


# ---------------------------------------------------------------- Model Stock


@pytest.mark.parametrize("count", [2, 3, 4])
@pytest.mark.parametrize("spread", [0.3, 2.0])
def test_model_stock_matches_formula(count, spread):
    rng = np.random.default_rng(24)
    base = rng.normal(size=500)
    taus = correlated(rng, 500, count, spread=spread)
    models = [base + 0.1 * t for t in taus]
    out = merge("model_stock", *tensors(base), tensors(*models))
    np.testing.assert_allclose(f64(out), ref_model_stock(base, models, (500,)), rtol=1e-12, atol=1e-14)


def test_model_stock_is_per_tensor_when_packed():
    rng = np.random.default_rng(25)
    lengths = (100, 300, 7)
    base = rng.normal(size=sum(lengths))
    models = [base.copy() for _ in range(3)]
    for sl, spread in zip(slices(lengths), (0.1, 1.0, 10.0), strict=True):
        for m, t in zip(models, correlated(rng, sl.stop - sl.start, 3, spread=spread), strict=True):
            m[sl] += 0.05 * t
    out = merge("model_stock", *tensors(base), tensors(*models), Packing(lengths, (0, 1, 2)))
    np.testing.assert_allclose(f64(out), ref_model_stock(base, models, lengths), rtol=1e-12, atol=1e-14)


def test_model_stock_single_fine_tune_is_that_fine_tune():
    rng = np.random.default_rng(26)
    base, a = rng.normal(size=200), rng.normal(size=200)
    out = merge("model_stock", *tensors(base), tensors(a))
    np.testing.assert_allclose(f64(out), a, rtol=1e-12, atol=1e-14)


def test_model_stock_zero_task_vector_counts_as_orthogonal():
    rng = np.random.default_rng(27)
    base = rng.normal(size=300)
    tau = rng.normal(size=300)
    models = [base + tau, base + 0.5 * tau + 0.1 * rng.normal(size=300), base.copy()]
    out = merge("model_stock", *tensors(base), tensors(*models))
    np.testing.assert_allclose(f64(out), ref_model_stock(base, models, (300,)), rtol=1e-12, atol=1e-14)


def test_model_stock_disagreeing_fine_tunes_stay_at_base():
    rng = np.random.default_rng(28)
    base, tau = rng.normal(size=300), rng.normal(size=300)
    out = merge("model_stock", *tensors(base), tensors(base + tau, base - tau))
    np.testing.assert_allclose(f64(out), base, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- pick


@pytest.mark.parametrize("index", [0, 1, 2])
def test_pick_returns_the_chosen_input(index):
    rng = np.random.default_rng(29)
    inputs = tensors(*[rng.normal(size=50) for _ in range(3)], dtype=torch.float32)
    out = merge("pick", inputs[0], inputs[1:], model=index)
    np.testing.assert_array_equal(out.numpy(), inputs[index].numpy())
    assert out.dtype == torch.float32


def test_pick_resolves_model_name_to_index():
    assert get_method("pick").resolve({"model": "b"}, NAMES, where="t") == {"model": 2}
    assert get_method("pick").resolve({}, NAMES, where="t") == {"model": 0}


# ---------------------------------------------------------------- properties of every method


def default_merge(name, base, models, packing=None):
    kwargs = METHODS[name].resolve({}, MANY_NAMES[: 1 + len(models)], where="t")
    return merge(name, base, models, packing, **kwargs)


ALL = sorted(METHODS)


def test_expected_methods_are_registered():
    assert {"linear", "task_arithmetic", "ties", "dare", "dare_ties", "slerp", "model_stock", "pick"} <= set(METHODS)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_inputs_give_that_tensor(name, dtype):
    x = torch.tensor(np.random.default_rng(30).normal(size=1000), dtype=dtype)
    out = default_merge(name, x, [x.clone(), x.clone()], Packing((600, 400), (1, 2)))
    assert out.dtype == dtype
    np.testing.assert_allclose(f64(out), f64(x), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_near_parallel_inputs_stay_finite_and_near_base(name):
    rng = np.random.default_rng(31)
    base64 = rng.normal(size=1000)
    cases = [
        tensors(base64, base64 * (1 + 1e-9), base64 * (1 - 1e-9)),
        tensors(
            base64, base64 + 1e-7 * rng.normal(size=1000), base64 + 1e-7 * rng.normal(size=1000), dtype=torch.float32
        ),
    ]
    for base, a, b in cases:
        out = default_merge(name, base, [a, b], Packing((500, 500), (3, 4)))
        values = f64(out)
        assert np.isfinite(values).all()
        np.testing.assert_allclose(values, f64(base), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ALL)
def test_zero_inputs_give_finite_results(name):
    rng = np.random.default_rng(32)
    zero = torch.zeros(300, dtype=torch.float32)
    out = default_merge(name, zero, [zero.clone(), zero.clone()], Packing((100, 200), (1, 2)))
    np.testing.assert_array_equal(out.numpy(), np.zeros(300))
    x, y = tensors(rng.normal(size=300), rng.normal(size=300), dtype=torch.float32)
    for base, models in ((zero, [x, y]), (x, [zero, y]), (x, [y, zero])):
        out = default_merge(name, base, models, Packing((100, 200), (1, 2)))
        assert np.isfinite(out.numpy()).all()


@pytest.mark.parametrize("name", ALL)
def test_zero_segment_among_others_is_finite(name):
    # One whole tensor of a packed call is zero in every input (e.g. a zero-initialised bias).
    rng = np.random.default_rng(33)
    inputs = tensors(*[rng.normal(size=400) for _ in range(3)], dtype=torch.float32)
    for x in inputs:
        x[100:150] = 0.0
    out = default_merge(name, inputs[0], inputs[1:], Packing((100, 50, 250), (1, 2, 3)))
    assert np.isfinite(out.numpy()).all()
    np.testing.assert_array_equal(out[100:150].numpy(), np.zeros(50))


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_keep_their_dtype(name, dtype):
    rng = np.random.default_rng(34)
    base = rng.normal(size=600)
    half = tensors(base, base + 0.1 * rng.normal(size=600), base + 0.1 * rng.normal(size=600), dtype=dtype)
    packing = Packing((200, 400), (5, 6))
    out = default_merge(name, half[0], half[1:], packing)
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    # Merged at float32 and rounded once: within one rounding of the float32 merge of the same values.
    wide = default_merge(name, half[0].float(), [m.float() for m in half[1:]], packing)
    eps = torch.finfo(dtype).eps
    np.testing.assert_allclose(f64(out), f64(wide), rtol=eps, atol=1e-6)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("count", [1, 2, 3])
def test_packed_merge_equals_each_tensor_merged_alone(name, count):
    rng = np.random.default_rng(35)
    lengths = (300, 77, 1000)
    keys = tuple(tensor_key(0, k) for k in ("p.weight", "p.bias", "q.weight"))
    n = sum(lengths)
    scales = np.concatenate([np.full(length, s) for length, s in zip(lengths, (0.02, 1.0, 0.1), strict=True)])
    base = rng.normal(size=n) * scales
    models = [base + rng.normal(size=n) * scales * s for s in (0.1, 0.3, 0.05)[:count]]
    inputs = tensors(base, *models, dtype=torch.float32)
    packed = f64(default_merge(name, inputs[0], inputs[1:], Packing(lengths, keys)))
    for sl, key in zip(slices(lengths), keys, strict=True):
        alone = default_merge(name, inputs[0][sl], [m[sl] for m in inputs[1:]], Packing.single(sl.stop - sl.start, key))
        np.testing.assert_allclose(packed[sl], f64(alone), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ALL)
def test_no_models_is_a_merge_error(name):
    x = torch.ones(5)
    with pytest.raises(MergeError):
        merge(name, x, [], weights=(1.0,))


# ---------------------------------------------------------------- resolve and validation


def test_unknown_method_lists_valid_names():
    with pytest.raises(MergeError) as error:
        get_method("tie")
    message = str(error.value)
    assert "tie" in message
    for name in METHODS:
        assert name in message


@pytest.mark.parametrize(
    "method, params, parameter",
    [
        ("task_arithmetic", {"lambda": 1.5}, "lambda"),
        ("ties", {"density": -0.1}, "density"),
        ("dare", {"density": 2}, "density"),
        ("linear", {"weights": {"sam": 1.0, "a": 1.2, "b": 0.0}}, "weights"),
        ("slerp", {"weights": {"sam": -1.0, "a": 1.0, "b": 0.0}}, "weights"),
    ],
)
def test_out_of_range_parameter_names_it_and_its_range(method, params, parameter):
    with pytest.raises(MergeError) as error:
        get_method(method).resolve(params, NAMES, where="encoder.blocks.0")
    message = str(error.value)
    assert parameter in message
    assert "[0.0, 1.0]" in message
    assert message.startswith("encoder.blocks.0")


@pytest.mark.parametrize("value", ["0.5", None, True, float("nan"), float("inf"), [0.5]])
def test_non_numeric_or_non_finite_parameter_is_a_merge_error(value):
    with pytest.raises(MergeError, match="lambda"):
        get_method("task_arithmetic").resolve({"lambda": value}, NAMES, where="t")


@pytest.mark.parametrize(
    "method, params",
    [
        ("linear", {"lambda": 0.5}),
        ("model_stock", {"density": 0.5}),
        ("ties", {"scale": 0.5}),
        ("pick", {"models": "a"}),
    ],
)
def test_unknown_parameter_is_a_merge_error(method, params):
    with pytest.raises(MergeError) as error:
        get_method(method).resolve(params, NAMES, where="t")
    assert next(iter(params)) in str(error.value)


@pytest.mark.parametrize("method", ["linear", "slerp"])
@pytest.mark.parametrize(
    "weights", [{"sam": 1.0, "a": 0.5}, {"sam": 1.0, "a": 0.5, "b": 0.5, "c": 0.1}, [1.0, 0.5, 0.5]]
)
def test_per_input_weights_must_name_each_input(method, weights):
    with pytest.raises(MergeError, match="weights"):
        get_method(method).resolve({"weights": weights}, NAMES, where="t")


def test_pick_of_unknown_input_is_a_merge_error():
    with pytest.raises(MergeError, match="model"):
        get_method("pick").resolve({"model": "medsam"}, NAMES, where="t")


def test_resolve_aligns_weights_with_inputs_and_fills_defaults():
    kwargs = get_method("linear").resolve({"weights": {"b": 0.2, "sam": 0.5, "a": 0.3}}, NAMES, where="t")
    assert kwargs == {"weights": (0.5, 0.3, 0.2)}
    assert get_method("slerp").resolve({}, NAMES, where="t") == {"weights": (1.0, 1.0, 1.0)}
    ties = get_method("ties").resolve({"density": 0.2}, NAMES, where="t")
    assert ties["density"] == 0.2 and 0.0 <= ties["lambda"] <= 1.0
    assert get_method("model_stock").resolve({}, NAMES, where="t") == {}


@pytest.mark.parametrize("method", ["linear", "slerp"])
def test_method_errors_surface_through_resolve_and_call(method):
    # Valid by the declarations (each weight in [0, 1]) but unusable: the method's own error must reach the caller.
    m = get_method(method)
    kwargs = m.resolve({"weights": {"sam": 0.0, "a": 0.0, "b": 0.0}}, NAMES, where="t")
    x = torch.ones(10)
    with pytest.raises(MergeError):
        m(x, [x + 1, x + 2], Packing.single(10), **kwargs)
