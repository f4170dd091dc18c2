"""engine/sampling.py's Sampler at the edges of BOUNDS: every value the bounds accept gives a token, never an error
(top_p=0 keeps the most likely token, as transformers' min_tokens_to_keep=1; a temperature so small that
logits/temperature overflows is its limit, greedy)."""

from __future__ import annotations

import pytest
import torch

from cohere_cli.engine.sampling import Sampler, SamplingParams


@pytest.mark.parametrize("params", [
    {"temperature": 1.0, "top_p": 0.0},
    {"temperature": 1.0, "top_p": 1e-300},
    {"temperature": 1e-45},
    {"temperature": 5e-324},
    {"temperature": 5e-324, "top_p": 0.0, "top_k": 1},
    {"temperature": 1e-30, "min_p": 1.0},
])
def test_edge_values_are_greedy_not_an_error(params):
    logits = torch.tensor([1.0, 3.0, float("-inf"), 2.5, -40.0])
    sample = Sampler(SamplingParams(**params, seed=1))
    assert [sample(logits) for _ in range(20)] == [1] * 20


def test_top_p_still_samples_within_its_mass():
    logits = torch.tensor([2.0, 2.0, -10.0, -10.0])
    sample = Sampler(SamplingParams(temperature=1.0, top_p=0.9, seed=3))
    assert {sample(logits) for _ in range(200)} == {0, 1}


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=1.0, seed=3),
                                    SamplingParams(temperature=0.7, top_k=5, top_p=0.9, min_p=0.01, seed=4,
                                                   repetition_penalty=1.3)])
def test_rows_past_the_vocabulary_are_never_picked(params):
    """The embedding rows past the tokenizer's vocabulary (n_valid) never come out, even where they hold the
    largest logits, and a history holding such ids (a repetition penalty reads it) is no error."""
    sampler = Sampler(params, n_valid=100)
    history = torch.tensor([3, 150, 99, 101])
    for i in range(50):
        logits = torch.randn(128, generator=torch.Generator().manual_seed(i))
        logits[100:] += 50.0
        before = logits.clone()
        assert 0 <= sampler(logits, history) < 100
        assert torch.equal(logits, before)  # the caller's logits untouched
