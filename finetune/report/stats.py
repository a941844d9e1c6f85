"""The statistics of a report: mean, spread and confidence interval over seeds, and the paired test."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); nan for one value
    ci_low: float  # the 95% confidence interval of the mean (t distribution); nan for one value
    ci_high: float


def summarize(values: Sequence[float]) -> Summary:
    x = np.asarray(values, dtype=float)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def paired_p_value(diffs: Sequence[float]) -> float:
    """Two-sided p-value of a paired t-test (a one-sample t-test of the differences against 0);
    nan with fewer than two pairs or differences that are all equal."""
    if len(diffs) < 2 or np.ptp(diffs) == 0:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # precision warnings for nearly equal values
        return float(stats.ttest_1samp(diffs, 0.0).pvalue)
