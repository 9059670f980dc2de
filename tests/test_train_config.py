"""Configuration: defaults, parsing, validation messages, misspelled names, README table."""
import re

import pytest

import train_gpt as tg
from conftest import ROOT


def build(env: dict, world_size: int = 1) -> tg.Config:
    cfg, _ = tg.config_from_env(env)
    tg.validate_config(cfg, world_size)
    return cfg


def test_defaults_are_the_published_12_layer_configuration():
    cfg = build({})
    assert (cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_mult) == (12, 512, 8, 4, 3.0)
    assert (cfg.train_seq_len, cfg.train_batch_tokens) == (1024, 524_288)
    assert (cfg.matrix_lr, cfg.scalar_lr, cfg.tied_embed_lr) == (0.025, 0.025, 0.035)
    assert (cfg.muon_momentum, cfg.muon_momentum_warmup_start, cfg.muon_momentum_warmup_steps) == (0.98, 0.92, 1500)
    assert (cfg.muon_wd, cfg.adam_wd, cfg.warmdown_iters, cfg.swa_every) == (0.04, 0.0, 2000, 50)
    assert (cfg.bigram_vocab_size, cfg.bigram_dim, cfg.eval_stride, cfg.zstd_level) == (2048, 96, 64, 22)
    assert (cfg.quant_bits_mlp, cfg.quant_bits_attn, cfg.quant_bits_embed) == (5, 6, 16)
    assert cfg.max_wallclock_seconds == 600
    # the default batch splits into whole sequences on 1, 2, 4 and 8 processes
    for world in (1, 2, 4, 8):
        build({}, world)


def test_values_are_parsed_by_type():
    cfg = build({"NUM_LAYERS": "10", "MLP_MULT": "2.6", "SMEAR_GATE": "false", "RUN_ID": " x ", "ITERATIONS": "1e3"})
    assert (cfg.num_layers, cfg.mlp_mult, cfg.smear_gate, cfg.run_id, cfg.iterations) == (10, 2.6, False, "x", 1000)


@pytest.mark.parametrize("env, world, message", [
    ({"NUM_LAYERS": "twelve"}, 1, "NUM_LAYERS='twelve' is not a number"),
    ({"NUM_LAYERS": "2.5"}, 1, "NUM_LAYERS='2.5' is not a whole number"),
    ({"SMEAR_GATE": "maybe"}, 1, "SMEAR_GATE='maybe' is not a boolean"),
    ({"MATRIX_LR": "fast"}, 1, "MATRIX_LR='fast' is not a number"),
    ({"NUM_LAYERS": "0"}, 1, "NUM_LAYERS=0 is out of range: use a value in [1, 1024]"),
    ({"MATRIX_LR": "-1"}, 1, "MATRIX_LR=-1.0 is out of range: use a value in [0, 10]"),
    ({"MODEL_DIM": "500"}, 1, "MODEL_DIM=500 is not divisible by NUM_HEADS=8"),
    ({"NUM_KV_HEADS": "3"}, 1, "NUM_HEADS=8 is not a multiple of NUM_KV_HEADS=3"),
    ({"MODEL_DIM": "24", "NUM_HEADS": "8", "NUM_KV_HEADS": "8"}, 1, "head dim MODEL_DIM/NUM_HEADS=3 must be even"),
    ({"TRAIN_BATCH_TOKENS": "1000"}, 1, "TRAIN_BATCH_TOKENS=1000 does not split into whole sequences"),
    ({}, 3, "MICRO_BATCHES=8 must be a multiple of the 3 processes"),
    ({"EVAL_STRIDE": "2048"}, 1, "EVAL_STRIDE=2048 is larger than the eval length 1024"),
    ({"EVAL_STRIDE": "600", "EVAL_SEQ_LEN": "512"}, 1, "EVAL_STRIDE=600 is larger than the eval length 512"),
    ({"VOCAB_SIZE": "70000"}, 1, "VOCAB_SIZE=70000 is out of range: use a value in [2, 65536]"),
    ({"QUANT_BITS_MLP": "9"}, 1, "QUANT_BITS_MLP=9 is out of range: use a value in [2, 8]"),
    ({"QUANT_BITS_EMBED": "12"}, 1, "QUANT_BITS_EMBED=12 is not allowed: use one of 2, 3, 4, 5, 6, 7, 8, 16"),
    ({"PRUNE_FRAC": "1"}, 1, "PRUNE_FRAC=1.0 is out of range: use a value in [0, 1)"),
    ({"ATTN_BACKEND": "xformers"}, 1, "ATTN_BACKEND='xformers' is not allowed: use one of auto, fa3, fa2, sdpa, matmul"),
    ({"COMPILE": "yes"}, 1, "COMPILE='yes' is not allowed: use one of auto, 0, 1"),
    ({"CPU_DTYPE": "fp16"}, 1, "CPU_DTYPE='fp16' is not allowed: use one of bf16, fp32"),
    ({"CHECKPOINT_EVERY": "often"}, 1, "CHECKPOINT_EVERY='often'"),
    ({"EVAL_ONLY": "1"}, 1, "EVAL_ONLY=1 needs ARTIFACT_PATH"),
])
def test_each_invalid_setting_gets_its_message(env, world, message):
    with pytest.raises(tg.ConfigError) as err:
        build(env, world)
    assert message in str(err.value)


def test_all_problems_are_reported_together():
    with pytest.raises(tg.ConfigError) as err:
        build({"MODEL_DIM": "500", "EVAL_STRIDE": "4096"})
    assert "MODEL_DIM=500" in str(err.value) and "EVAL_STRIDE=4096" in str(err.value)


def test_misspelled_setting_is_reported_with_the_intended_name():
    _, warnings = tg.config_from_env({"NUM_LAYER": "12", "MATRIX_LRR": "0.1", "HOME": "/root", "PATH": "/bin",
                                      "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": "29500"})
    assert warnings == ["MATRIX_LRR is not a setting and is ignored; did you mean MATRIX_LR?",
                        "NUM_LAYER is not a setting and is ignored; did you mean NUM_LAYERS?"]


def test_checkpoint_interval_forms():
    assert tg.checkpoint_interval(tg.Config(checkpoint_every="0")) == (0.0, "steps")
    assert tg.checkpoint_interval(tg.Config(checkpoint_every="500")) == (500.0, "steps")
    assert tg.checkpoint_interval(tg.Config(checkpoint_every="900s")) == (900.0, "seconds")
    for bad in ("-1", "1.5", "inf", "nans", "infs", "0s", "x"):
        assert tg.checkpoint_interval(tg.Config(checkpoint_every=bad)) is None, bad


def test_readme_documents_every_setting_with_its_default_and_allowed_values():
    rows = {name: (default, allowed.replace("\\|", "|")) for name, default, allowed in  # "\|": a | inside a table
            re.findall(r"^\| `([A-Z0-9_]+)` \| `([^`]*)` \| `([^`]*)` \|", (ROOT / "README.md").read_text(), re.M)}
    expected = {name: (str(int(v)) if isinstance(v, bool) else str(v), f.metadata["allowed"])
                for name, f in tg.ENV_NAMES.items() for v in [getattr(tg.DEFAULTS, f.name)]}
    assert rows == expected
