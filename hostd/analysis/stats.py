"""Confidence intervals shared by `hostd tune`, `hostd compare` and `python -m bench`.

Every figure that carries an interval is written as one JSON object with the same names
everywhere: {"value", "ci_low", "ci_high", "n"} (95% unless said otherwise). A bound of None means
the data cannot bound the figure on that side at that confidence (too few samples), which is
different from a bound of 0.

- quantile_ci: distribution-free, from order statistics. The number of samples below the true
  q-quantile is Binomial(n, q) whatever the distribution, so the interval between two order
  statistics whose ranks are binomial quantiles covers it with at least the stated probability.
- wilson: the Wilson score interval for a success ratio (stays inside [0, 1], sane at 0 or n
  successes, where the textbook p +- z*sqrt(p(1-p)/n) collapses to a point).
- mean_ci: Student's t interval for the mean of a few repeats (run-to-run spread), and
  batch_mean_ci for the mean of one long correlated series (batch means).
- ratio_ci: the ratio of two positive figures from the extremes of their intervals; with each
  at (1 + c) / 2 the pair holds jointly at c or more (Bonferroni); ratio_of_means and
  chunk_quantiles give bench's ratios their spread across chunks of a run or across repeats.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist, median

import numpy as np

CONFIDENCE = 0.95
BATCHES = 20  # batch means: enough batches for t to be near z, few enough that batches decorrelate
CHUNKS = 10  # chunk spreads: a run cut into this many consecutive pieces


@dataclass(frozen=True)
class Interval:
    value: float | None
    ci_low: float | None  # None: unbounded below at this confidence
    ci_high: float | None  # None: unbounded above
    n: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def lo(self) -> float:
        return -math.inf if self.ci_low is None else self.ci_low

    @property
    def hi(self) -> float:
        return math.inf if self.ci_high is None else self.ci_high

    def width(self) -> float:
        return self.hi - self.lo

    def overlaps(self, other: "Interval") -> bool:
        return self.lo <= other.hi and other.lo <= self.hi

    def around(self, value: float | None) -> "Interval":
        """This interval reported for an estimate of the same figure (a pooled median for a mean
        of chunk medians), widened to contain it: a superset covers at least as often."""
        if value is None:
            return self
        lo = None if self.ci_low is None else min(self.ci_low, value)
        hi = None if self.ci_high is None else max(self.ci_high, value)
        return Interval(value, lo, hi, self.n)


def interval(d: dict | Interval | None) -> Interval | None:
    """An Interval from its JSON form (or itself)."""
    if d is None or isinstance(d, Interval):
        return d
    return Interval(d["value"], d["ci_low"], d["ci_high"], d["n"])


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


# --- percentiles: order statistics ----------------------------------------------------------

def _binom_cdf(n: int, q: float) -> tuple[int, np.ndarray]:
    """(k0, cdf) with cdf[i] = P(Binomial(n, q) <= k0 + i), over a window of +-12 sd (the mass
    outside it is below 1e-30), built from the pmf's ratio recurrence in log space."""
    sd = math.sqrt(n * q * (1 - q))
    k0 = max(0, int(n * q - 12 * sd) - 12)
    k1 = min(n, int(n * q + 12 * sd) + 12)
    k = np.arange(k0, k1, dtype=np.float64)  # steps k -> k+1
    first = (math.lgamma(n + 1) - math.lgamma(k0 + 1) - math.lgamma(n - k0 + 1)
             + k0 * math.log(q) + (n - k0) * math.log1p(-q))
    steps = np.log((n - k) / (k + 1)) + math.log(q) - math.log1p(-q)
    logpmf = np.concatenate(([first], first + np.cumsum(steps)))
    pmf = np.exp(logpmf - logpmf.max())
    return k0, np.cumsum(pmf) / pmf.sum()  # the window holds all but < 1e-30 of the mass


def quantile_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int | None, int | None]:
    """1-based ranks (l, u) of the order statistics bounding the q-quantile of n samples, each
    tail at most (1 - confidence) / 2; None where no rank in 1..n is far enough out."""
    if not 0 < q < 1:
        raise ValueError("q must be in (0, 1)")
    if n <= 0:
        return None, None
    alpha = (1 - confidence) / 2
    k0, cdf = _binom_cdf(n, q)
    # B = samples below the quantile. X_(l) <= quantile iff B >= l: P(miss low) = P(B <= l-1).
    below = np.nonzero(cdf <= alpha)[0]
    lo = int(k0 + below[-1]) + 1 if below.size else (None if k0 == 0 else k0)
    # X_(u) >= quantile iff B <= u-1: P(miss high) = 1 - P(B <= u-1).
    above = np.nonzero(cdf >= 1 - alpha)[0]
    up = int(k0 + above[0]) + 1 if above.size else None
    if lo is not None and lo < 1:
        lo = None
    if up is not None and up > n:
        up = None
    return lo, up


def quantile_ci(samples: np.ndarray | Sequence[float], q: float, confidence: float = CONFIDENCE) -> Interval:
    """The q-quantile (numpy's default, linear interpolation) with its distribution-free interval."""
    x = np.asarray(samples)
    n = int(x.size)
    if n == 0:
        return Interval(None, None, None, 0)
    lo, up = quantile_ranks(n, q, confidence)
    pos = q * (n - 1)
    a, b = math.floor(pos), math.ceil(pos)
    ranks = sorted({a, b} | {r - 1 for r in (lo, up) if r is not None})
    part = np.partition(x, ranks)  # the few order statistics needed, without a full sort
    value = float(part[a]) + (pos - a) * (float(part[b]) - float(part[a]))
    # The interpolated estimate can fall just outside the order statistics when n is small (p99 of
    # 2 samples): widen to it, a superset covers at least as often.
    return Interval(value, None if lo is None else min(value, float(part[lo - 1])),
                    None if up is None else max(value, float(part[up - 1])), n)


def min_n_for_quantile(q: float, confidence: float = CONFIDENCE) -> int:
    """The fewest samples whose q-quantile interval is bounded on both sides: both extreme order
    statistics must miss the quantile with probability (1 - confidence) / 2 at most."""
    alpha = (1 - confidence) / 2
    return max(2, math.ceil(math.log(alpha) / math.log(q)), math.ceil(math.log(alpha) / math.log1p(-q)))


# --- ratios of successes ------------------------------------------------------------------------

def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    if n <= 0:
        return Interval(None, 0.0, 1.0, 0)
    z = _z(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; say so rather than -1e-17.
    return Interval(p, 0.0 if successes == 0 else max(0.0, centre - half),
                    1.0 if successes == n else min(1.0, centre + half), n)


# --- means of repeats -----------------------------------------------------------------------------

def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (closed form, Abramowitz & Stegun 26.7.3)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(3, df - 1, 2):
            term *= c2 * (k - 1) / k
            total += term
        return 2 / math.pi * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0
    for k in range(2, df - 1, 2):
        term *= c2 * (k - 1) / k
        total += term
    return s * total


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """t such that P(|T| < t) = confidence."""
    if df > 200:  # Fisher's expansion in 1/df, two terms: off by < 1e-6 here
        z = _z(confidence)
        return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)
    lo, hi = 0.0, 1.0
    while _t_two_sided(hi, df) < confidence:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_two_sided(mid, df) < confidence else (lo, mid)
    return hi


def mean_ci(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Interval:
    """Mean of the repeats with its Student-t interval; unbounded with fewer than 2 (None values left out)."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return Interval(None, None, None, 0)
    m = float(x.mean())
    if n < 2:
        return Interval(m, None, None, 1)
    half = t_quantile(n - 1, confidence) * float(x.std(ddof=1)) / math.sqrt(n)
    return Interval(m, m - half, m + half, n)


def summarize(values: Sequence[float | None]) -> dict:
    """Median and min-max of the runs' values; None values (no sample) are left out. Also the
    mean of the repeats with its 95% Student-t interval as value, ci_low, ci_high (None with
    fewer than 2 runs): compare's verdicts order two cells only where these intervals do not overlap."""
    xs = [v for v in values if v is not None]
    ci = mean_ci(xs).to_dict()
    if not xs:
        return {"median": None, "min": None, "max": None, **ci}
    return {"median": median(xs), "min": min(xs), "max": max(xs), **ci}


def batch_mean_ci(series: np.ndarray | Sequence[float], confidence: float = CONFIDENCE,
                  batches: int = BATCHES) -> Interval:
    """Mean of a long series (in time order) with the t interval over the means of consecutive
    batches: neighbouring samples are correlated (load comes and goes), batches much less so."""
    x = np.asarray(series, dtype=np.float64)
    n = int(x.size)
    if n < 2 * batches:
        return mean_ci(x.tolist(), confidence)
    means = [float(b.mean()) for b in np.array_split(x, batches)]
    iv = mean_ci(means, confidence)
    return Interval(float(x.mean()), iv.ci_low, iv.ci_high, n)


def ratio_ci(num: Interval, den: Interval) -> Interval:
    """num / den for positive figures, from the extremes of the two intervals. With each at
    (1 + c) / 2 the ratio's interval holds at c or more (Bonferroni)."""
    if num.value is None or not den.value:
        return Interval(None, None, None, min(num.n, den.n))
    lo = None if num.ci_low is None or den.ci_high is None or den.ci_high <= 0 else num.ci_low / den.ci_high
    hi = None if num.ci_high is None or den.ci_low is None or den.ci_low <= 0 else num.ci_high / den.ci_low
    return Interval(num.value / den.value, lo, hi, min(num.n, den.n))


def ratio_of_means(nums: Sequence[float], dens: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean(nums) / mean(dens) for positive repeats or chunks, each mean at (1 + c) / 2 (Bonferroni)."""
    side = (1 + confidence) / 2
    return ratio_ci(mean_ci(list(nums), side), mean_ci(list(dens), side))


def chunk_quantiles(samples: np.ndarray | Sequence[float], q: float, chunks: int = CHUNKS) -> list[float]:
    """The q-quantile of each of `chunks` consecutive pieces of a time-ordered series: how the
    figure moved during the run (others' load comes and goes), for a spread across chunks."""
    x = np.asarray(samples)
    if x.size < chunks:
        return []
    return [float(np.percentile(c, 100 * q)) for c in np.array_split(x, chunks)]


def scaled_n(n: int, width: float, wanted: float) -> int:
    """Samples for an interval of `width` at n to shrink to `wanted`: widths go as 1/sqrt(n)."""
    if n <= 0 or not math.isfinite(width) or wanted <= 0:
        raise ValueError("need n > 0, a finite width and a positive target width")
    return max(n + 1, math.ceil(n * (width / wanted) ** 2))
