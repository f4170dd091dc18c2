"""config.json, the one reader and parser (cohere_cli/config.py), on files a Hub or a mirror could send."""

from __future__ import annotations

import json
import math

import pytest

from cohere_cli.config import MAX_CONFIG_BYTES, ModelConfig, read_config
from cohere_cli.errors import CheckpointError
from cohere_cli.store import sizes

GOOD = {"model_type": "cohere2", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 4, "intermediate_size": 128, "vocab_size": 256, "head_dim": 32, "sliding_window": 16,
        "max_position_embeddings": 512}


def write(tmp_path, cfg) -> None:
    (tmp_path / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))


def test_cohere2_head_dim_and_window_are_transformers_reading_everywhere():
    """Cohere2Config forces head_dim = hidden / heads whatever the file says, and the KV sizes agree with the model."""
    mc = ModelConfig.from_hf(GOOD)
    d = sizes.Dims.from_config(GOOD)
    assert mc.head_dim == d.head_dim == 16
    assert d.sliding == [mc.is_sliding(i) for i in range(4)] == [True, True, True, False]
    no_window = {**GOOD, "sliding_window": None}
    assert sizes.Dims.from_config(no_window).sliding == [ModelConfig.from_hf(no_window).is_sliding(i)
                                                          for i in range(4)]


@pytest.mark.parametrize("bad, says", [
    ({**GOOD, "rope_scaling": "yarn"}, "rope_parameters / rope_scaling must be an object"),
    ({**GOOD, "num_attention_heads": 0}, "num_attention_heads = 0 is out of range"),
    ({**GOOD, "vocab_size": -5}, "vocab_size = -5 is out of range"),
    ({**GOOD, "num_hidden_layers": 10**9}, "num_hidden_layers = 1000000000 is out of range"),
    ({**GOOD, "max_position_embeddings": 10**30}, "max_position_embeddings = 10000000000000000000000000"),
    ({**GOOD, "hidden_size": [64]}, "hidden_size must be an integer"),
    ({**GOOD, "num_key_value_heads": 3}, "not a multiple of num_key_value_heads"),
    ({**GOOD, "sliding_window_pattern": 0}, "sliding_window_pattern = 0 is out of range"),
    ({**GOOD, "tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false"),
    ({**GOOD, "layer_norm_eps": float("nan")}, "layer_norm_eps must be a finite number"),
    ({**GOOD, "layer_types": "sliding"}, "layer_types must be a list"),
    ("[" * 100_000 + "]" * 100_000, "nests too deep"),
    ({**GOOD, "model_type": "llama"}, "not a Cohere architecture"),
    ([1, 2], "not a JSON object"),
    ("{not json", "not valid JSON"),
    (" " * (MAX_CONFIG_BYTES + 1), "over 1 MiB"),
])
def test_a_bad_config_is_one_checkpoint_error(tmp_path, bad, says):
    write(tmp_path, bad)
    with pytest.raises(CheckpointError, match=says) as e:
        read_config(tmp_path)
    assert "\n" not in str(e.value)


def test_sizing_a_config_the_model_cannot_run_never_raises_more_than_value_error():
    """`cohere download` and `models info` size any config: one the model refuses falls back to the plain reading,
    and nonsense is a ValueError (one note), never a traceback."""
    d = sizes.Dims.from_config({**GOOD, "rope_scaling": "yarn"})
    assert d.hidden == 64 and not math.isnan(d.head_dim)
    with pytest.raises(ValueError):
        sizes.Dims.from_config({"model_type": "cohere", "hidden_size": 64})


@pytest.mark.parametrize("bad", [
    {**GOOD, "num_hidden_layers": 10**9},  # the reported case: a billion-entry layer list
    {**GOOD, "model_type": "llama", "num_hidden_layers": 10**9},  # variant: the plain reading of a foreign config
    {**GOOD, "num_attention_heads": 0}, {**GOOD, "vocab_size": -5}, {**GOOD, "sliding_window_pattern": 0},
])
def test_sizing_a_hostile_config_is_a_value_error_not_a_memory_bomb(bad):
    with pytest.raises(ValueError, match="out of range"):
        sizes.Dims.from_config(bad)


def test_cli_on_a_hostile_config_is_one_line_under_a_memory_limit(tmp_path):
    """`cohere models info` and `cohere chat` on a folder whose config.json says num_hidden_layers = 10**9 (a
    billion-entry list: 8 GB) or nests 100,000 deep: one error line, run under a 1 GiB address-space limit so a
    regression fails fast instead of eating the machine."""
    from factory_tokenizer import make_tokenizer
    from limits import run_cli

    for i, cfg in enumerate([{**GOOD, "num_hidden_layers": 10**9}, "[" * 100_000 + "]" * 100_000]):
        folder = tmp_path / f"m{i}"
        make_tokenizer(folder)
        write(folder, cfg)
        for args in (["models", "info", str(folder)], ["chat", str(folder), "--prompt", "hi", "--plain"]):
            r = run_cli(args, address_space=(3 << 30) if args[0] == "chat" else (1 << 30), home=tmp_path / "home")
            assert r.returncode != 0, r.stdout
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
            assert "out of range" in lines[0] or "nests too deep" in lines[0]
