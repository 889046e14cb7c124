"""hostd.analysis.stats: the intervals cover what they claim, shrink with n, and read back the same."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostd.analysis import stats
from hostd.output.intervals import compact, si

TRIALS = 400
# Coverage measured on TRIALS samples may fall this far below 95% by chance (4 standard errors).
SLACK = 4 * math.sqrt(0.05 * 0.95 / TRIALS)

DISTRIBUTIONS = {  # sampler, true q-quantile
    "uniform": (lambda rng, size: rng.uniform(0, 1, size), lambda q: q),
    "exponential": (lambda rng, size: rng.exponential(1.0, size), lambda q: -math.log1p(-q)),
    "lognormal": (lambda rng, size: rng.lognormal(12, 1.0, size), lambda q: math.exp(12 + NormalDist().inv_cdf(q))),
    # integer ns with many ties, like wake latencies
    "integer": (lambda rng, size: rng.geometric(0.05, size), None),
}


def _binomial_pmf(n: int, p: float) -> np.ndarray:
    k = np.arange(n + 1)
    logpmf = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k]) \
        + k * math.log(p) + (n - k) * math.log1p(-p)
    return np.exp(logpmf)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), q=st.sampled_from([0.05, 0.25, 0.5, 0.9, 0.99]))
def test_quantile_ranks_cover_exactly_and_are_the_tightest(n, q):
    """The number of samples below the true quantile is Binomial(n, q) for any continuous
    distribution: the ranks' coverage is computed exactly, and moving either rank inward drops it."""
    lo, up = stats.quantile_ranks(n, q)
    cdf = np.cumsum(_binomial_pmf(n, q))
    P = lambda k: 0.0 if k < 0 else float(cdf[min(k, n)])  # noqa: E731  P(B <= k)
    miss_low = P(lo - 1) if lo else 0.0
    miss_high = 1 - P(up - 1) if up else 0.0
    assert miss_low <= 0.025 + 1e-9 and miss_high <= 0.025 + 1e-9
    assert 1 - miss_low - miss_high >= 0.95 - 1e-9
    if lo is not None and lo < n:
        assert P(lo) > 0.025 - 1e-9  # rank lo + 1 would miss too often
    if lo is None:
        assert P(0) > 0.025 - 1e-9  # not even the smallest sample bounds it
    if up is not None and up > 1:
        assert 1 - P(up - 2) > 0.025 - 1e-9
    if up is None:
        assert 1 - P(n - 1) > 0.025 - 1e-9
    if n >= stats.min_n_for_quantile(q):
        assert lo is not None and up is not None
    else:
        assert lo is None or up is None


@settings(max_examples=30, deadline=None)
@given(n=st.integers(6, 400), q=st.sampled_from([0.1, 0.5, 0.9, 0.99]),
       dist=st.sampled_from(sorted(DISTRIBUTIONS)), seed=st.integers(0, 2**32 - 1))
def test_quantile_interval_covers_the_known_quantile(n, q, dist, seed):
    """Synthetic samples with a known quantile: the interval holds it in >= 95% of the trials."""
    draw, truth = DISTRIBUTIONS[dist]
    rng = np.random.default_rng(seed)
    x = draw(rng, (TRIALS, n))
    if truth is None:  # the integer distribution: its quantile from a very large sample
        true_q = float(np.quantile(draw(rng, 2_000_000), q, method="inverted_cdf"))
    else:
        true_q = truth(q)
    ivs = [stats.quantile_ci(row, q) for row in x]
    covered = np.mean([iv.lo <= true_q <= iv.hi for iv in ivs])
    assert covered >= 0.95 - SLACK, (covered, ivs[:3])
    for row, iv in zip(x[:5], ivs):  # the value is numpy's percentile, inside its own interval
        assert iv.value == pytest.approx(float(np.percentile(row, 100 * q)))
        assert iv.lo <= iv.value <= iv.hi and iv.n == n


@settings(max_examples=40, deadline=None)
@given(n=st.integers(6, 2000), q=st.sampled_from([0.25, 0.5, 0.75, 0.9, 0.99]), factor=st.integers(2, 8))
def test_quantile_interval_narrows_with_n(n, q, factor):
    n = max(n, stats.min_n_for_quantile(q))
    # The same distribution at two sample sizes, without sampling luck: its quantiles at (i - 0.5) / n.
    ppf = lambda m: np.array([NormalDist().inv_cdf((i - 0.5) / m) for i in range(1, m + 1)])  # noqa: E731
    small, large = stats.quantile_ci(ppf(n), q), stats.quantile_ci(ppf(factor * n), q)
    assert large.width() < small.width()


def test_quantile_interval_is_unbounded_where_the_data_cannot_bound_it():
    iv = stats.quantile_ci([5, 1, 3, 2, 4], 0.5)  # 5 samples: 2 x 0.5**5 = 6.25% > 5%
    assert iv.value == 3 and iv.ci_low is None and iv.ci_high is None
    iv = stats.quantile_ci([5, 1, 3, 2, 4, 6], 0.5)
    assert (iv.ci_low, iv.ci_high) == (1, 6)
    assert stats.quantile_ci([], 0.5) == stats.Interval(None, None, None, 0)
    assert stats.min_n_for_quantile(0.5) == 6
    with pytest.raises(ValueError):
        stats.quantile_ranks(10, 1.0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(10, 400), p=st.floats(0.001, 0.999))
def test_wilson_coverage(n, p):
    """Exact coverage of the Wilson interval: never far below 95% (its known dips near 0 and 1
    stay above 83%), and 95% on average over p."""
    pmf = _binomial_pmf(n, p)
    ivs = [stats.wilson(k, n) for k in range(n + 1)]
    covered = sum(w for w, iv in zip(pmf, ivs) if iv.lo <= p <= iv.hi)
    assert covered >= 0.83
    grid = np.linspace(0.01, 0.99, 99)
    mean = np.mean([sum(w for w, iv in zip(_binomial_pmf(n, g), ivs) if iv.lo <= g <= iv.hi) for g in grid])
    assert 0.94 <= mean <= 0.97


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 500), data=st.data(), m=st.integers(2, 10))
def test_wilson_narrows_with_n_and_stays_in_0_1(n, data, m):
    k = data.draw(st.integers(0, n))
    a, b = stats.wilson(k, n), stats.wilson(k * m, n * m)
    assert 0 <= a.ci_low <= a.value <= a.ci_high <= 1
    assert b.width() < a.width()
    assert (a.ci_low == 0) == (k == 0) and (a.ci_high == 1) == (k == n)


def test_wilson_known_values():
    iv = stats.wilson(1, 6)  # the one lucky poll out of 6
    assert (round(iv.ci_low, 3), round(iv.ci_high, 3)) == (0.030, 0.564)
    assert stats.wilson(0, 0) == stats.Interval(None, 0.0, 1.0, 0)
    assert stats.wilson(0, 380).ci_high < 0.0101


@pytest.mark.parametrize("df, t", [(1, 12.706), (2, 4.303), (3, 3.182), (10, 2.228), (30, 2.042), (120, 1.980),
                                   (1000, 1.962)])
def test_t_quantiles_match_the_tables(df, t):
    assert stats.t_quantile(df) == pytest.approx(t, abs=1e-3)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 30), seed=st.integers(0, 2**32 - 1))
def test_mean_interval_covers_the_mean_of_normal_repeats(n, seed):
    x = np.random.default_rng(seed).normal(10.0, 3.0, (TRIALS, n))
    covered = np.mean([stats.mean_ci(row.tolist()).lo <= 10.0 <= stats.mean_ci(row.tolist()).hi for row in x])
    assert covered >= 0.95 - SLACK


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=20).filter(lambda v: max(v) - min(v) > 1e-3),
       m=st.integers(2, 6))
def test_mean_interval_narrows_with_repeats(values, m):
    assert stats.mean_ci(values * m).width() < stats.mean_ci(values).width()


def test_mean_interval_of_one_run_is_unbounded_and_none_is_left_out():
    assert stats.mean_ci([7.0, None]) == stats.Interval(7.0, None, None, 1)
    iv = stats.mean_ci([1.0, 2.0, 3.0])
    assert iv.value == 2.0 and iv.ci_high - 2.0 == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)


def test_batch_means_see_correlation_that_a_naive_interval_misses():
    """A series whose level drifts (load coming and going): batches are wider than iid would be."""
    rng = np.random.default_rng(7)
    series = np.repeat(rng.normal(100, 10, 50), 200) + rng.normal(0, 1, 10_000)
    batched = stats.batch_mean_ci(series)
    naive = stats.mean_ci(series.tolist())
    assert batched.width() > 5 * naive.width()
    assert batched.n == naive.n == 10_000 and batched.value == pytest.approx(naive.value)


def test_ratio_interval_from_the_extremes():
    r = stats.ratio_ci(stats.Interval(10.0, 8.0, 12.0, 5), stats.Interval(2.0, 1.0, 4.0, 7))
    assert r == stats.Interval(5.0, 2.0, 12.0, 5)
    assert stats.ratio_ci(stats.Interval(1.0, None, 2.0, 3), stats.Interval(1.0, 1.0, 1.0, 3)).ci_low is None


def test_json_form_and_compact_text():
    iv = stats.quantile_ci(np.arange(1, 101), 0.5)
    d = iv.to_dict()
    assert list(d) == ["value", "ci_low", "ci_high", "n"]
    assert stats.interval(d) == iv
    assert compact(d, si) == "50.5 [40-61]"
    assert compact(stats.Interval(546368.0, None, 620000.0, 5), si, " ns") == "546k ns [?-620k]"
    assert compact(None, si) == "-"
    assert si(1234) == "1.23k" and si(2_000_000) == "2M"
    assert stats.Interval(1.0, 0.5, 2.0, 3).overlaps(stats.Interval(1.9, 1.8, None, 3))
    assert not stats.Interval(1.0, 0.5, 1.5, 3).overlaps(stats.Interval(2.0, 1.6, None, 3))
