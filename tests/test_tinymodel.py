import hashlib
import json
from pathlib import Path

import pytest

from samullm.cli import main as cli_main
from samullm.errors import UserInputError
from samullm.tinymodel import (
    PRESETS,
    TinyModelSpec,
    ensure_tiny_model,
    make_tiny_model,
    preset,
    read_recipe,
    training_corpus,
)

# Small enough to make in well under a second once transformers is imported.
SMALL = TinyModelSpec(layers=1, hidden=64, heads=1, kv_heads=1, intermediate=128, vocab=300, max_len=256)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "small", SMALL)


def test_config_matches_spec(small_model):
    config = json.loads((small_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] == 64
    assert config["num_hidden_layers"] == 1
    assert config["num_attention_heads"] == 1
    assert config["head_dim"] == 64
    assert config["vocab_size"] == 300
    assert config["max_position_embeddings"] == 256
    assert (small_model / "model.safetensors").is_file()
    assert read_recipe(small_model) == SMALL


def test_tokenizer_is_local_and_round_trips(small_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(small_model, local_files_only=True)
    assert len(tokenizer) == 300
    assert tokenizer.eos_token == "</s>" and tokenizer.eos_token_id == 1
    text = "the stoun of prai 1234, Thea!"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    # Byte-level: any text encodes, even characters never seen in training.
    assert tokenizer.decode(tokenizer.encode("ünïcödé ☃", add_special_tokens=False)) == "ünïcödé ☃"


def test_same_seed_same_files_other_seed_other_weights(small_model, tmp_path):
    again = make_tiny_model(tmp_path / "again", SMALL)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert digest(again / name) == digest(small_model / name)
    other = make_tiny_model(tmp_path / "other", TinyModelSpec(**{**SMALL.__dict__, "seed": 1}))
    assert digest(other / "model.safetensors") != digest(small_model / "model.safetensors")


def test_ensure_reuses_a_matching_model_and_replaces_another(tmp_path):
    out = ensure_tiny_model(tmp_path / "m", SMALL)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(out, SMALL) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    bigger = TinyModelSpec(**{**SMALL.__dict__, "layers": 2})
    ensure_tiny_model(out, bigger)
    assert read_recipe(out) == bigger
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    assert not list(tmp_path.glob(".m.tmp-*"))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"heads": 8}, "head size"),  # 64/8 = 8
        ({"hidden": 128, "heads": 8}, "head size"),  # 16: refused by vLLM's CPU attention
        ({"hidden": 100, "heads": 3}, "not a multiple of --heads"),
        ({"heads": 1, "kv_heads": 2}, "multiple of --kv-heads"),
        ({"vocab": 100}, "too small"),
        ({"layers": 0}, "positive"),
    ],
)
def test_bad_shapes_are_refused(change, words):
    with pytest.raises(UserInputError, match=words):
        TinyModelSpec(**{**SMALL.__dict__, **change}).validate()


def test_presets_are_valid_and_ordered_by_size():
    for spec in PRESETS.values():
        spec.validate()
        assert spec.head_dim == 64
    cost = {name: s.layers * s.hidden * (s.hidden + s.intermediate) for name, s in PRESETS.items()}
    assert cost["tiny-s"] < cost["tiny-m"] < cost["tiny-l"]
    with pytest.raises(UserInputError, match="tiny-s"):
        preset("tiny-xl")


def test_corpus_is_deterministic():
    assert training_corpus(3) == training_corpus(3)
    assert training_corpus(3) != training_corpus(4)


def test_cli_makes_a_model_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "cli"
    code = cli_main(["make-tiny-model", str(out), "--layers", "1", "--hidden", "64", "--heads", "1",
                     "--kv-heads", "1", "--intermediate", "128", "--vocab", "300", "--max-len", "256"])
    assert code == 0
    assert read_recipe(out) == SMALL
    assert cli_main(["make-tiny-model", str(tmp_path / "bad"), "--hidden", "128", "--heads", "8"]) == 2
    assert "head size" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.integration
def test_vllm_generates_exactly_max_tokens(tiny_s, tmp_path):
    from samullm.worker import JobSpec, Row, SamplingSpec, read_results, run_job

    lengths = [1, 5, 17, 64]
    job = JobSpec(
        model=str(tiny_s),
        engine={"max_model_len": 512, "kv_cache_memory_bytes": 64 << 20},
        rows=[
            Row(row_id=f"r{n}", prompt="the stoun of prai", sampling=SamplingSpec(max_tokens=n, ignore_eos=True))
            for n in lengths
        ],
        result_path=str(tmp_path / "results.jsonl"),
    )
    outcome = run_job(job, tmp_path / "work", timeout=120)
    assert outcome.terminal.event == "finished", outcome
    results = read_results(job.result_path)
    assert {r: results[r].output_tokens for r in results} == {f"r{n}": n for n in lengths}
    assert all(r.finish_reason == "length" and r.prompt_tokens > 0 for r in results.values())
