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
