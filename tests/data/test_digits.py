"""scikit-learn's real digits in the three views."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from bench.data.digits import CLASSNAMES, N_IMAGES, QUESTION, digits_dataset


def test_classification_is_the_real_pixels_and_labels():
    splits = digits_dataset("classification", train_size=20, eval_size=10, image_size=8)
    assert splits.classnames == ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    raw = load_digits()
    scaled = np.rint(raw.images * 255 / 16).astype(np.uint8)
    for s in splits.train + splits.eval:
        grey = np.asarray(s.image)[:, :, 0]
        assert s.image.mode == "RGB" and s.image.size == (8, 8)
        matches = np.flatnonzero((scaled == grey).all(axis=(1, 2)))
        assert len(matches) and raw.target[matches[0]] == s.label


def test_train_and_eval_are_disjoint_and_deterministic():
    a = digits_dataset("classification", train_size=300, eval_size=100, image_size=8, seed=1)
    b = digits_dataset("classification", train_size=300, eval_size=100, image_size=8, seed=1)
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != digits_dataset("classification", train_size=300, eval_size=100, image_size=8).fingerprint
    train = {s.image.tobytes() for s in a.train}
    # sklearn's digits hold a few exact duplicates; eval must not share more than those
    assert sum(s.image.tobytes() in train for s in a.eval) <= 2
    assert len({s.label for s in a.train}) == 10


def test_caption_and_vqa_views():
    cap = digits_dataset("caption", train_size=5, eval_size=5, image_size=32)
    for s in cap.train:
        assert s.captions[0] == f"a handwritten digit {CLASSNAMES[s.label]}" and len(s.captions) == 3
        assert s.image.size == (32, 32)
    vqa = digits_dataset("vqa", train_size=5, eval_size=5)
    for s in vqa.eval:
        assert s.question == QUESTION and s.answers == (CLASSNAMES[s.label],) * 10
        assert s.turns == ((QUESTION, CLASSNAMES[s.label]),)
    assert [s.image.tobytes() for s in cap.train] == [s.image.tobytes() for s in vqa.train]


def test_asking_for_more_than_there_is():
    with pytest.raises(ValueError, match=str(N_IMAGES)):
        digits_dataset("classification", train_size=1700, eval_size=200)
