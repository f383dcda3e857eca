"""The default avatar's audio-model corpus: augmented utterances and the opening-to-parameters map."""

from __future__ import annotations

import numpy as np

from offline_training.default_avatar.corpus_a2e import OpeningToParams
from offline_training.default_avatar.speech_corpus import make_utterance


def test_utterances_carry_a_mouth_target_per_frame_and_repeat_from_their_seed() -> None:
    utterance = make_utterance(seed=4, seconds=3.0)
    assert utterance.audio.shape == (3 * 16_000,)
    assert utterance.opening.shape == (75,)
    assert utterance.opening.min() >= 0.0 and utterance.opening.max() <= 1.0
    assert utterance.opening.max() > 0.3 and (utterance.opening < 0.05).any()  # speech and pauses
    again = make_utterance(seed=4, seconds=3.0)
    np.testing.assert_array_equal(again.audio, utterance.audio)
    np.testing.assert_array_equal(again.opening, utterance.opening)
    assert not np.array_equal(make_utterance(seed=5, seconds=3.0).audio, utterance.audio)


def test_opening_map_recovers_a_quadratic_and_scores_what_it_explains() -> None:
    rng = np.random.default_rng(0)
    opening = rng.uniform(0, 1, 400).astype(np.float32)
    params = np.stack([2 * opening - opening**2, 0.5 - opening, opening**2], axis=1).astype(np.float32)
    weights = np.ones(3, np.float32)
    mapping = OpeningToParams.fit(opening, params)
    np.testing.assert_allclose(mapping(opening), params, atol=1e-4)
    assert mapping.explained_variance(opening, params, weights) > 0.999
    noisy = (params + rng.normal(scale=params.std(0), size=params.shape)).astype(np.float32)
    assert 0.3 < mapping.explained_variance(opening, noisy, weights) < 0.7
