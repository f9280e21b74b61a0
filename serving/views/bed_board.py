"""The bed board: expected discharges and occupied beds per unit for the next days.

For each admitted patient the LOS task gives four class probabilities (0-2, 3, 4-5 and more
than 5 calendar days from admission to discharge, as the labels count LOS). They are spread
over whole days:

* a bounded class spreads its probability uniformly over its days (0-2 days: 1/3 each of
  LOS 0, 1, 2; 4-5 days: 1/2 each of LOS 4, 5);
* the open class (more than 5 days) becomes a geometric tail from day 6,
  P(LOS = 6 + k) = p * (1 - r) * r**k with r = m / (m + 1), whose mean is m extra days
  (`los_tail_mean_extra_days`).

A patient admitted `e` calendar days ago is still in hospital, so LOS >= e: the distribution
is conditioned on that, P(LOS = e + j | LOS >= e) is the probability of discharge on day j
(j = 0 is today) and P(LOS > e + j | LOS >= e) the probability of still occupying a bed at the
end of day j. If the model put no probability on a stay this long, the rest of the stay is
taken as the geometric tail itself starting today (and the patient is flagged).

Per unit and day, each patient is a Bernoulli trial: the expected count is the sum of the
probabilities, its variance the sum of p(1 - p), and the band is the central interval of the
exact Poisson-binomial distribution of the count. New admissions are not forecast: occupied
beds count today's patients only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np

BOUNDED_BINS: tuple[tuple[int, int], ...] = ((0, 2), (3, 3), (4, 5))  # the open bin starts at day 6
TAIL_START = 6
_NO_MASS = 1e-12


def los_pmf(class_probs: Sequence[float], days: int, tail_mean_extra_days: float) -> np.ndarray:
    """P(LOS = d) for d = 0 .. days-1 (the rest of the tail lies beyond)."""
    probs = np.asarray(class_probs, dtype=np.float64)
    if probs.shape != (len(BOUNDED_BINS) + 1,):
        raise ValueError(f"expected {len(BOUNDED_BINS) + 1} LOS class probabilities, got {probs.shape}")
    probs = probs / probs.sum()
    pmf = np.zeros(max(days, TAIL_START))
    for p, (low, high) in zip(probs, BOUNDED_BINS, strict=False):
        pmf[low:high + 1] += p / (high - low + 1)
    r = tail_mean_extra_days / (tail_mean_extra_days + 1.0)
    k = np.arange(len(pmf) - TAIL_START)
    pmf[TAIL_START:] = probs[-1] * (1 - r) * r ** k
    return pmf[:days]


def los_survival(class_probs: Sequence[float], day: int, tail_mean_extra_days: float) -> float:
    """P(LOS >= day)."""
    if day <= 0:
        return 1.0
    probs = np.asarray(class_probs, dtype=np.float64)
    probs = probs / probs.sum()
    if day >= TAIL_START:
        r = tail_mean_extra_days / (tail_mean_extra_days + 1.0)
        return float(probs[-1] * r ** (day - TAIL_START))
    return float(1.0 - los_pmf(probs, day, tail_mean_extra_days).sum())


@dataclass(frozen=True)
class PatientOutlook:
    """Day j = 0 .. horizon-1: P(discharged on day j), P(in a bed at the end of day j)."""

    discharge: np.ndarray
    occupied: np.ndarray
    beyond_model: bool  # stayed longer than the model gave any probability to


def patient_outlook(class_probs: Sequence[float], elapsed_days: int, horizon: int,
                    tail_mean_extra_days: float) -> PatientOutlook:
    e = max(int(elapsed_days), 0)
    survival = los_survival(class_probs, e, tail_mean_extra_days)
    if survival > _NO_MASS:
        pmf = los_pmf(class_probs, e + horizon, tail_mean_extra_days)[e:e + horizon] / survival
        beyond = False
    else:
        r = tail_mean_extra_days / (tail_mean_extra_days + 1.0)
        pmf = (1 - r) * r ** np.arange(horizon)
        beyond = True
    discharge = np.clip(pmf, 0.0, 1.0)
    occupied = np.clip(1.0 - np.cumsum(discharge), 0.0, 1.0)
    return PatientOutlook(discharge, occupied, beyond)


def poisson_binomial_pmf(probabilities: Sequence[float]) -> np.ndarray:
    """P(count = k), k = 0..n, of a sum of independent Bernoulli trials (exact convolution)."""
    pmf = np.array([1.0])
    for p in probabilities:
        pmf = np.append(pmf * (1 - p), 0.0) + np.append(0.0, pmf * p)
    return pmf


def central_interval(pmf: np.ndarray, coverage: float) -> tuple[int, int]:
    """The smallest k_lo and k_hi with P(count < k_lo) <= (1-coverage)/2 and P(count > k_hi) <= (1-coverage)/2."""
    tail = (1.0 - coverage) / 2.0
    cdf = np.cumsum(pmf)
    low = int(np.searchsorted(cdf, tail + 1e-12, side="left"))
    high = int(np.searchsorted(cdf, 1.0 - tail - 1e-12, side="left"))
    return low, min(high, len(pmf) - 1)


def count_summary(probabilities: Sequence[float], coverage: float) -> dict:
    """Expected count, standard deviation and the Poisson-binomial band of a sum of Bernoullis."""
    p = np.asarray(probabilities, dtype=np.float64)
    low, high = central_interval(poisson_binomial_pmf(p), coverage)
    return {"expected": round(float(p.sum()), 3), "sd": round(float(np.sqrt((p * (1 - p)).sum())), 3),
            "low": low, "high": high}


@dataclass(frozen=True)
class Admitted:
    encounter_id: str
    patient_id: str
    unit: str
    admitted_at: datetime
    los_probabilities: list[float] | None  # None: not scored yet
    model_version: str | None = None


def elapsed_calendar_days(admitted_at: datetime, as_of: datetime, zone: ZoneInfo) -> int:
    return (as_of.astimezone(zone).date() - admitted_at.astimezone(zone).date()).days


def bed_board(patients: Sequence[Admitted], as_of: datetime, days: int, zone: ZoneInfo,
              tail_mean_extra_days: float, coverage: float) -> dict:
    """Units -> days -> expected discharges and occupied beds with bands and the patients behind them."""
    today: date = as_of.astimezone(zone).date()
    units: dict[str, list[Admitted]] = {}
    for patient in patients:
        units.setdefault(patient.unit, []).append(patient)
    out = []
    for unit in sorted(units):
        scored, unscored, outlooks = [], [], []
        for patient in units[unit]:
            if patient.los_probabilities is None:
                unscored.append({"encounter": patient.encounter_id, "patient": patient.patient_id})
                continue
            e = elapsed_calendar_days(patient.admitted_at, as_of, zone)
            outlooks.append((patient, e, patient_outlook(patient.los_probabilities, e, days, tail_mean_extra_days)))
            scored.append(patient)
        day_rows = []
        for j in range(days):
            discharge = [o.discharge[j] for _, _, o in outlooks]
            occupied = [o.occupied[j] for _, _, o in outlooks]
            day_rows.append({
                "date": (today + timedelta(days=j)).isoformat(),
                "discharges": count_summary(discharge, coverage),
                "occupied": count_summary(occupied, coverage),
                "patients": [{"encounter": p.encounter_id, "patient": p.patient_id, "days_in_hospital": e,
                              "p_discharge": round(float(o.discharge[j]), 4), "p_occupied": round(float(o.occupied[j]), 4),
                              "beyond_model": o.beyond_model} for p, e, o in outlooks],
            })
        out.append({"unit": unit, "census": len(units[unit]), "scored": len(scored), "unscored": unscored,
                    "days": day_rows})
    return {"as_of": as_of.isoformat(), "timezone": str(zone), "days": days, "coverage": coverage,
            "tail_mean_extra_days": tail_mean_extra_days, "units": out}
