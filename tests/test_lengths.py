"""Output-length distributions: construction, sampling, censored fitting, prior + observations,
and the shipped tables against the data they were derived from."""

from __future__ import annotations

import json

import numpy as np
import pytest

from costmodel.errors import UserInputError
from costmodel.lengths import (
    GENERIC_SOURCE,
    GENERIC_TABLE,
    MODEL_TABLES,
    PMF_SOURCE,
    LengthDistribution,
    combine,
    default_lengths,
    derive_tables,
    shipped_length_models,
)
from costmodel.paths import package_data, shared_data

needs_shared_data = pytest.mark.skipif(
    not shared_data(PMF_SOURCE).is_file() or not shared_data(GENERIC_SOURCE).is_file(),
    reason="shared data folder not found (set SAMULLM_SHARED_DATA)")


def test_from_pmf_by_hand():
    dist = LengthDistribution.from_pmf([0.5, 0.0, 0.25, 0.25])  # lengths 1, 3, 4
    assert dist.values.tolist() == [1, 3, 4]
    assert dist.cdf.tolist() == [0.5, 0.75, 1.0]
    assert dist.mean() == pytest.approx(0.5 + 0.75 + 1.0)
    assert dist.quantile(0.5) == 1 and dist.quantile(0.51) == 3 and dist.quantile(1.0) == 4
    assert dist.pmf().tolist() == [0.5, 0.0, 0.25, 0.25]


def test_from_table_linear_between_knots_and_atoms_kept():
    # Levels 0..0.4 spread evenly over lengths 2..5 (the CDF is linear from 1 to 5: 0.1
    # each), nothing from 6 to 9, an atom of 0.6 at 10.
    dist = LengthDistribution.from_table([0.0, 0.4, 0.4, 1.0], [1, 5, 10, 10])
    pmf = dist.pmf()
    assert pmf == pytest.approx([0.0, 0.1, 0.1, 0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.6])


def test_table_round_trip_keeps_atoms_and_mean():
    rng = np.random.default_rng(3)
    pmf = np.zeros(2048)
    pmf[:2047] = rng.gamma(2.0, 1.0, 2047) * np.exp(-np.arange(2047) / 300)
    pmf *= 0.7 / pmf.sum()
    pmf[0] += 0.08  # outputs that stop at once
    pmf[-1] = 0.22  # outputs cut at the maximum length
    source = LengthDistribution.from_pmf(pmf)
    table = source.to_table()
    back = LengthDistribution.from_table(table["levels"], table["values"])
    assert len(table["levels"]) < 160
    assert back.pmf()[0] == pytest.approx(source.pmf()[0], abs=1e-9)
    assert back.pmf()[-1] == pytest.approx(0.22, abs=1e-9)
    assert back.mean() == pytest.approx(source.mean(), rel=0.01)
    assert np.abs(np.cumsum(back.pmf()) - np.cumsum(source.pmf())).max() < 0.011


def test_sample_matches_its_source():
    dist = LengthDistribution.from_pmf([0.1, 0.2, 0.3, 0.0, 0.4])
    draws = dist.sample(200_000, np.random.default_rng(0))
    freq = np.bincount(draws, minlength=6)[1:] / draws.size
    # four standard errors of a proportion near 0.3 at n = 200,000 is about 0.004
    assert freq == pytest.approx([0.1, 0.2, 0.3, 0.0, 0.4], abs=0.004)


def test_sample_truncates_by_max_tokens_and_caps():
    dist = LengthDistribution.from_pmf(np.ones(100))
    rng = np.random.default_rng(1)
    caps = np.array([5, 50, 500] * 1000)
    draws = dist.sample(caps.size, rng, max_tokens=40, caps=caps)
    assert draws.max() <= 40
    assert np.all(draws <= caps)
    assert np.all(draws[caps == 5] <= 5) and (draws[caps == 5] == 5).mean() > 0.9
    per_request = dist.sample(3, rng, max_tokens=np.array([1, 2, 3]))
    assert np.all(per_request <= [1, 2, 3])


def test_sample_refuses_requests_without_room():
    dist = LengthDistribution.from_pmf([1.0])
    with pytest.raises(UserInputError, match="no room for output"):
        dist.sample(2, np.random.default_rng(0), caps=np.array([3, 0]))


def test_same_seed_same_lengths():
    dist = default_lengths("vicuna-13b-v1.5")
    a = dist.sample(1000, np.random.default_rng(7), max_tokens=512)
    b = dist.sample(1000, np.random.default_rng(7), max_tokens=512)
    assert np.array_equal(a, b)


def test_expected_is_the_truncated_mean():
    dist = LengthDistribution.from_pmf([0.5, 0.0, 0.0, 0.5])  # 1 or 4
    assert dist.expected(max_tokens=2, n=1).tolist() == [1.5]
    assert dist.expected(caps=np.array([1, 3, 10])).tolist() == [1.0, 2.0, 2.5]


def test_kaplan_meier_without_censoring_is_the_empirical_distribution():
    dist = LengthDistribution.from_observations([3, 1, 3, 2])
    assert dist.pmf().tolist() == pytest.approx([0.25, 0.25, 0.5])


def test_kaplan_meier_by_hand():
    # lengths 1, 2 (censored), 3, 3: S(1) = 3/4; at 2 no event, 3 at risk; the censored one
    # leaves; at 3 both at risk stop: S(3) = 0. So P(1) = 1/4, P(3) = 3/4.
    dist = LengthDistribution.from_observations([1, 2, 3, 3], [False, True, False, False])
    assert dist.pmf().tolist() == pytest.approx([0.25, 0.0, 0.75])


def test_censored_fit_recovers_a_known_distribution():
    rng = np.random.default_rng(11)
    true = LengthDistribution.from_pmf(np.exp(-np.arange(400) / 80.0))
    natural = true.sample(60_000, rng)
    caps = rng.integers(20, 600, natural.size)  # each request's max_tokens
    observed = np.minimum(natural, caps)
    hit_cap = natural > caps
    fitted = LengthDistribution.from_observations(observed, hit_cap)
    naive = LengthDistribution.from_observations(observed)  # caps taken as lengths
    grid = np.arange(1, 300)
    true_cdf = np.cumsum(true.pmf())[grid - 1]

    def cdf(d):
        return np.cumsum(np.pad(d.pmf(), (0, 600)))[grid - 1]

    assert np.abs(cdf(fitted) - true_cdf).max() < 0.01
    assert np.abs(cdf(naive) - true_cdf).max() > 0.03  # ignoring censoring is biased
    assert fitted.mean() == pytest.approx(true.mean(), rel=0.02)


def test_combine_without_censoring_is_prior_pseudo_counts():
    prior = LengthDistribution.from_pmf([0.5, 0.5])
    # weight 2 pseudo-observations: (2 * [0.5, 0.5, 0] + counts [0, 0, 2]) / (2 + 2)
    mixed = combine(prior, [3, 3], prior_weight=2)
    assert mixed.pmf().tolist() == pytest.approx([0.25, 0.25, 0.5])


def test_combine_lets_observations_take_over():
    prior = default_lengths("vicuna-13b-v1.5")
    rng = np.random.default_rng(5)
    own = LengthDistribution.from_pmf(np.r_[np.zeros(599), np.ones(200)])  # 600..799
    few = combine(prior, own.sample(10, rng))
    many = combine(prior, own.sample(20_000, rng))
    assert combine(prior, []) is prior
    assert prior.mean() < few.mean() < many.mean()
    assert many.mean() == pytest.approx(own.mean(), rel=0.01)


def test_combine_continues_the_prior_beyond_censored_caps():
    prior = LengthDistribution.from_pmf(np.ones(1000))  # uniform 1..1000
    # every observation hit a cap of 100: beyond it, the prior's shape (uniform) continues
    mixed = combine(prior, np.full(5000, 100), np.ones(5000, dtype=bool))
    pmf = mixed.pmf()
    assert pmf[:100].sum() < 0.01
    assert pmf[100:] == pytest.approx(np.full(900, 1 / 900), rel=0.05)


def test_bad_observations_are_refused():
    with pytest.raises(UserInputError):
        LengthDistribution.from_observations([])
    with pytest.raises(UserInputError):
        LengthDistribution.from_observations([3, 0])
    with pytest.raises(UserInputError, match="censoring flags"):
        LengthDistribution.from_observations([3, 4], [True])
    with pytest.raises(UserInputError):
        LengthDistribution.from_pmf([0.0, 0.0])
    with pytest.raises(UserInputError):
        LengthDistribution.from_table([0.0, 0.5], [1, 2])  # levels must reach 1


def test_model_lookup_matches_like_model_specs():
    exact = default_lengths("vicuna-13b-v1.5")
    assert exact.source.endswith("vicuna-13b-v1.5")
    assert default_lengths("lmsys/vicuna-13b-v1.5").source == exact.source
    assert default_lengths("LMSYS/Vicuna-13B-v1.5").source == exact.source
    generic = default_lengths("someone/unknown-model")
    assert GENERIC_TABLE in generic.source and generic.max_length == 1024
    assert len(shipped_length_models()) == 23


def test_shipped_files_name_their_sources():
    for name in (MODEL_TABLES, GENERIC_TABLE):
        with open(package_data(name), encoding="utf-8") as handle:
            assert "shared/data/" in json.load(handle)["source"]


@needs_shared_data
def test_shipped_tables_are_derived_from_the_shared_data():
    per_model, generic = derive_tables(shared_data(PMF_SOURCE), shared_data(GENERIC_SOURCE))
    with open(package_data(MODEL_TABLES), encoding="utf-8") as handle:
        shipped = json.load(handle)
    assert shipped["models"] == json.loads(json.dumps(per_model["models"]))
    with open(package_data(GENERIC_TABLE), encoding="utf-8") as handle:
        assert json.load(handle)["values"] == generic["values"]


@needs_shared_data
def test_shipped_tables_sample_like_their_source():
    with open(shared_data(PMF_SOURCE), encoding="utf-8") as handle:
        pmfs = json.load(handle)["pmf"]
    rng = np.random.default_rng(0)
    for name, pmf in pmfs.items():
        source = LengthDistribution.from_pmf(pmf)
        shipped = default_lengths(name)
        assert shipped.mean() == pytest.approx(source.mean(), rel=0.01), name
        top = len(pmf)  # outputs cut at the maximum length: an atom to keep exactly
        shipped_pmf = np.pad(shipped.pmf(), (0, max(0, top - shipped.max_length)))
        assert shipped_pmf[top - 1] == pytest.approx(pmf[-1], abs=1e-6), name
        assert shipped_pmf[0] == pytest.approx(source.pmf()[0], abs=1e-6), name
        draws = shipped.sample(20_000, rng, max_tokens=2048)
        truth = source.expected(max_tokens=2048, n=1)[0]
        # std of the mean of 20,000 draws is under 1% of it for these distributions
        assert draws.mean() == pytest.approx(truth, rel=0.03), name
        for q in (0.25, 0.5, 0.9):
            expected = min(source.quantile(q), 2048)
            assert abs(np.quantile(draws, q) - expected) <= 0.05 * expected + 3, (name, q)
