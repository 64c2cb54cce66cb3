"""The Compare page's "how often answers survive" sentences (studio/compare.survival) from a run's files."""

from __future__ import annotations

from hopscotch_core.studio.compare import survival

ANSWERS = {"probes": {"arithmetic": {"questions": 200, "variants": {
    "original": {"acc": 0.19, "acc_ci": [0.14, 0.25], "kept": 1.0, "kept_ci": [1.0, 1.0], "kept_of": 38},
    "hopscotch-unscaled": {"acc": 0.12, "acc_ci": [0.08, 0.17], "kept": 0.42, "kept_ci": [0.26, 0.58], "kept_of": 38},
    "hopscotch": {"acc": 0.2, "acc_ci": [0.15, 0.26], "kept": 0.61, "kept_ci": [0.45, 0.76], "kept_of": 38}}}}}
BENCH = {"average": {"benchmarks": ["arc_easy", "piqa"], "variants": {
    "original": {"acc_per_char": 0.5, "kept": 1.0, "kept_ci": [1.0, 1.0]},
    "hopscotch": {"acc_per_char": 0.49, "kept": 0.975, "kept_ci": [0.951, 0.998]}}}}


def test_survival_states_the_trained_or_unscaled_share_with_its_interval():
    trained = " ".join(survival(ANSWERS, BENCH, scaled=True))
    assert "200 generated one-step arithmetic" in trained and "answers 38 correctly" in trained
    assert "61% of those correctly (95% interval 45%–76%)" in trained and "20% of all (the original: 19%)" in trained
    assert "On 2 multiple-choice benchmarks it keeps 97.5%" in trained and "95.1%–99.8%" in trained
    unscaled = " ".join(survival(ANSWERS, BENCH, scaled=False))
    assert "42% of those" in unscaled and "(unscaled)" in unscaled
    assert "benchmarks" not in unscaled  # no unscaled row in the benchmark average here
    assert survival(None, None, True) == []


def test_survival_says_when_the_original_gets_nothing_right():
    none = {"probes": {"gsm8k": {"questions": 32, "variants": {
        "original": {"acc": 0.0, "acc_ci": [0, 0], "kept": None, "kept_ci": None, "kept_of": 0},
        "hopscotch": {"acc": 0.03, "acc_ci": [0, 0.1], "kept": None, "kept_ci": None, "kept_of": 0}}}}}
    assert survival(none, None, True) == ["On 32 held-out GSM8K prompts the original answers none correctly, so "
                                          "there is nothing to keep."]
