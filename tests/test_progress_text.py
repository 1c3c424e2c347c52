"""Progress in words: the time-left estimate and how it reads."""
from __future__ import annotations

from napari_ssl.progress_text import Eta, duration_words, step_text


def test_duration_words_read_like_a_person_says_them():
    assert duration_words(3) == "a few seconds"
    assert duration_words(42) == "about 40 s"
    assert duration_words(70) == "about 1 min 10 s"
    assert duration_words(200) == "about 3 min"
    assert duration_words(3900) == "about 1 h 05 min"


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_eta_ignores_start_up_and_follows_the_rate():
    clock = Clock()
    eta = Eta(clock)
    assert eta.update(1, 300) is None  # the first step only starts the clock (model building is not counted)
    clock.t += 0.5
    assert eta.update(2, 300) is None  # too little progress to say anything
    for step in range(3, 101):
        clock.t += 0.5  # 2 steps a second
        left = eta.update(step, 300)
    assert abs(left - 100.0) < 5.0, left  # 200 steps left at 2 steps/s
    # the rate halves: the estimate moves towards the new rate, smoothed (no jump on one slow step)
    clock.t += 1.0
    jumped = eta.update(101, 300)
    assert 99.0 < jumped < 110.0, jumped


def test_step_text():
    assert step_text("Training the model", 12, 300, None) == "Training the model: step 12 of 300 (estimating time left)"
    assert step_text("Training the model", 120, 300, 70) == "Training the model: step 120 of 300, about 1 min 10 s left"
    assert step_text("Predicting", 296, 296, 0, unit="slice") == "Predicting: slice 296 of 296"
