"""Bed-board arithmetic against hand computations (written out below)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from serving.views.bed_board import (
    Admitted,
    bed_board,
    central_interval,
    count_summary,
    los_pmf,
    los_survival,
    patient_outlook,
    poisson_binomial_pmf,
)

TAIL = 3.0  # geometric tail mean: r = 3 / 4 = 0.75, P(LOS = 6 + k | > 5 d) = 0.25 * 0.75**k
A = [0.5, 0.2, 0.2, 0.1]  # 0-2 d, 3 d, 4-5 d, > 5 d


def test_class_probabilities_are_spread_uniformly_in_each_bin_and_geometrically_beyond_five_days():
    # by hand: 0.5/3 on days 0, 1, 2; 0.2 on day 3; 0.2/2 on days 4, 5; 0.1 * 0.25 * 0.75**k from day 6
    expected = [1 / 6, 1 / 6, 1 / 6, 0.2, 0.1, 0.1, 0.025, 0.01875, 0.0140625]
    assert los_pmf(A, 9, TAIL) == pytest.approx(expected)
    assert los_pmf(A, 500, TAIL).sum() == pytest.approx(1.0)
    assert los_survival(A, 1, TAIL) == pytest.approx(5 / 6)  # 1 - 1/6
    assert los_survival(A, 7, TAIL) == pytest.approx(0.1 * 0.75)  # tail from day 7
    assert los_survival(A, 6, TAIL) == pytest.approx(0.1)


def test_a_patient_outlook_is_conditioned_on_the_days_already_stayed():
    # admitted yesterday (e = 1): P(LOS >= 1) = 5/6, so divide P(LOS = 1 + j) by 5/6
    o = patient_outlook(A, elapsed_days=1, horizon=6, tail_mean_extra_days=TAIL)
    assert o.discharge == pytest.approx([0.2, 0.2, 0.24, 0.12, 0.12, 0.03])
    # still in a bed at the end of day j = 1 - cumulative discharges
    assert o.occupied == pytest.approx([0.8, 0.6, 0.36, 0.24, 0.12, 0.09])
    assert not o.beyond_model
    # 10 days in, only the tail is left: P(LOS = 10 + j | LOS >= 10) = 0.25 * 0.75**j (memoryless)
    long = patient_outlook([0, 0, 0, 1], 10, 3, TAIL)
    assert long.discharge == pytest.approx([0.25, 0.1875, 0.140625])
    # the model gave no chance to a 5-day stay (all mass on 0-2 d): the geometric tail starts today
    beyond = patient_outlook([1, 0, 0, 0], 5, 2, TAIL)
    assert beyond.beyond_model and beyond.discharge == pytest.approx([0.25, 0.1875])


def test_poisson_binomial_counts_and_bands():
    # two trials p = 0.2, 0.5: P(0) = 0.8*0.5, P(1) = 0.2*0.5 + 0.8*0.5, P(2) = 0.2*0.5
    assert poisson_binomial_pmf([0.2, 0.5]) == pytest.approx([0.4, 0.5, 0.1])
    assert central_interval(np.array([0.4, 0.5, 0.1]), 0.9) == (0, 2)
    assert central_interval(np.array([0.01, 0.98, 0.01]), 0.9) == (1, 1)
    s = count_summary([0.2, 0.5], 0.9)
    assert s["expected"] == pytest.approx(0.7) and s["sd"] == pytest.approx(np.sqrt(0.16 + 0.25), abs=1e-3)


def test_bed_board_sums_patients_per_unit_and_day():
    zone = ZoneInfo("UTC")
    now = datetime(2024, 6, 10, 12, tzinfo=UTC)
    patients = [
        Admitted("e1", "p1", "4W", now - timedelta(days=1), A),  # admitted yesterday
        Admitted("e2", "p2", "4W", now - timedelta(hours=2), [0, 0, 0, 1]),  # admitted today, long stay
        Admitted("e3", "p3", "4W", now - timedelta(days=2), None),  # not scored yet
        Admitted("e4", "p4", "ICU", now - timedelta(days=10), [0, 0, 0, 1]),
    ]
    board = bed_board(patients, now, 7, zone, TAIL, 0.9)
    four_west, icu = board["units"]
    assert (four_west["unit"], four_west["census"], four_west["scored"]) == ("4W", 3, 2)
    assert four_west["unscored"] == [{"encounter": "e3", "patient": "p3"}]
    day0, day6 = four_west["days"][0], four_west["days"][6]
    assert day0["date"] == "2024-06-10" and day6["date"] == "2024-06-16"
    # day 0: e1 leaves with 0.2, e2 cannot (LOS > 5 d): expected 0.2, sd sqrt(0.2 * 0.8) = 0.4
    assert day0["discharges"] == {"expected": 0.2, "sd": 0.4, "low": 0, "high": 1}
    # occupied at the end of day 0: 0.8 + 1.0 = 1.8, sd 0.4; count is 1 (p 0.2) or 2 (p 0.8) -> band 1..2
    assert day0["occupied"] == {"expected": 1.8, "sd": 0.4, "low": 1, "high": 2}
    # day 6: e1 leaves with P(LOS = 7 | >= 1) = 0.01875 / (5/6) = 0.0225; e2 with P(LOS = 6) = 0.25
    assert day6["discharges"]["expected"] == pytest.approx(0.0225 + 0.25, abs=1e-3)
    assert {p["encounter"]: p["p_discharge"] for p in day6["patients"]} == {"e1": 0.0225, "e2": 0.25}
    # the ICU patient, 10 days in: 0.25 today
    assert icu["days"][0]["discharges"]["expected"] == 0.25
    assert icu["days"][0]["patients"][0]["days_in_hospital"] == 10


def test_days_are_calendar_days_of_the_hospital_time_zone():
    zone = ZoneInfo("America/New_York")
    now = datetime(2024, 6, 10, 3, tzinfo=UTC)  # 23:00 on June 9 in New York
    admitted = datetime(2024, 6, 9, 14, tzinfo=UTC)  # 10:00 on June 9 in New York: 0 days in hospital
    board = bed_board([Admitted("e1", "p1", "4W", admitted, A)], now, 1, zone, TAIL, 0.9)
    day = board["units"][0]["days"][0]
    assert day["date"] == "2024-06-09" and day["patients"][0]["days_in_hospital"] == 0
    assert day["discharges"]["expected"] == pytest.approx(1 / 6, abs=1e-3)
