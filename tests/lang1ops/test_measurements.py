"""The note's measured values: what counts as a value, its bins, and storage as plain data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lang1ops.measurements import MeasurementBins, first_values, measured_values
from lang1ops.ngrams import NgramFeatures


def test_values_are_keyed_by_the_words_beside_them_and_dates_times_and_names_are_not_values():
    text = "73 yo M. HR 96, BP 131/74, SpO2 95% on 2L. Admitted 11/03/2024 at 10:30. Cr 0.85, v2.1 form."
    pairs = measured_values(text)
    assert (">yo", 73.0) in pairs and ("<hr", 96.0) in pairs and ("<cr", 0.85) in pairs
    assert ("<bp", 131.0) in pairs and ("<bp/", 74.0) in pairs  # a pressure is two values
    assert ("<spo2", 95.0) in pairs
    values = [v for _, v in pairs]
    assert 2024.0 not in values and 11.0 not in values and 3.0 not in values  # the date
    assert 10.0 not in values and 30.0 not in values  # the time
    assert 2.1 not in values  # a version inside a word
    assert all(k != "<spo" for k, _ in pairs)  # the 2 of SpO2 is part of the name


def test_the_first_value_of_a_key_wins():
    assert first_values("HR 120 on arrival, HR 80 at discharge")["<hr"] == 120.0


def test_bins_follow_the_training_quantiles_and_rare_keys_are_dropped():
    texts = [f"HR {60 + i} and RR {12 + i % 9}" for i in range(100)] + ["Lactate 4.1"]
    bins = MeasurementBins.fit(texts, min_note_fraction=0.05, bins=4)
    assert "<hr" in bins.edges and "<rr" in bins.edges and "<lactate" not in bins.edges
    assert bins.edges["<hr"] == pytest.approx(list(np.quantile(np.arange(60, 160), [0.25, 0.5, 0.75])))
    rows = bins.transform(["HR 61", "HR 150 RR 13", "no numbers here"]).toarray()
    hr = slice(bins.offsets["<hr"], bins.offsets["<hr"] + len(bins.edges["<hr"]) + 1)
    assert rows[0, hr].tolist() == [1, 0, 0, 0] and rows[1, hr].tolist() == [0, 0, 0, 1]
    assert rows[1].sum() == 2 and rows[2].sum() == 0


def test_the_measurements_travel_in_ngrams_json_and_load_back_the_same(tmp_path):
    texts = [f"Patient {i} with HR {70 + i % 40} and fever {i % 3}" for i in range(60)]
    features = NgramFeatures.fit(texts, min_df=1, measurements=True)
    assert features.size == features.terms + features.measurements.size
    features.save(tmp_path)
    stored = json.loads((tmp_path / "ngrams.json").read_text())
    assert "<hr" in stored["measurements"]["edges"]
    loaded = NgramFeatures.load(tmp_path, features.idf)
    probe = ["HR 99 and fever 2", "nothing"]
    np.testing.assert_array_equal(loaded.transform(probe).toarray(), features.transform(probe).toarray())
    stored["measurements"]["edges"]["<hr"] = [3.0, 1.0]
    (tmp_path / "ngrams.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="ascending"):
        NgramFeatures.load(tmp_path, features.idf)
