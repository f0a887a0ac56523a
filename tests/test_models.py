import json

import numpy as np
import pytest

from costmodel.errors import UserInputError
from costmodel.models import derive_model_specs, load_model_spec, spec_from_hf_config
from costmodel.paths import package_data, shared_data

LLAMA2_7B = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
    "vocab_size": 32000, "max_position_embeddings": 4096, "hidden_act": "silu",
    "tie_word_embeddings": False, "torch_dtype": "float16",
}


def test_llama2_7b_figures_by_hand():
    spec = spec_from_hf_config(LLAMA2_7B, "llama-7b")
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert spec.param_count() == 32 * per_layer + 2 * 32000 * 4096 + 4096 == 6_738_415_616
    assert spec.head_dim == 128
    assert spec.weight_bytes(1) == 2 * 6_738_415_616
    # keys and values, 32 layers, 32 heads of 128, fp16
    assert spec.kv_bytes_per_token(1) == 2 * 32 * 32 * 128 * 2 == 524_288
    assert spec.kv_bytes_per_token(2) == 524_288 // 2
    # 2 FLOPs per multiply-add of every layer matrix
    assert spec.linear_flops_per_token(1) == 2 * 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert spec.attention_flops(10, 1) == 4 * 32 * 32 * 128 * 10


def test_llama2_70b_grouped_query_kv_bytes():
    spec = load_model_spec("meta-llama/Llama-2-70b-chat-hf")
    assert spec.num_kv_heads == 8 and spec.head_dim == 128
    assert spec.kv_bytes_per_token(1) == 2 * 80 * 8 * 128 * 2 == 327_680
    assert spec.kv_bytes_per_token(8) == 2 * 80 * 1 * 128 * 2
    # more devices than KV heads: vLLM keeps one (replicated) KV head per device
    assert spec.kv_heads_per_device(16) == 1
    assert spec.param_count() == pytest.approx(68.98e9, rel=0.002)


def test_weight_bytes_split_over_tp_with_replicated_parts():
    spec = load_model_spec("chatglm3-6b")  # 2 KV heads: replicated at TP 4
    whole = spec.weight_bytes(1)
    assert spec.weight_bytes(2) * 2 >= whole
    assert spec.weight_bytes(4) * 4 > whole  # KV projections and norms held on every device
    assert spec.weight_bytes(4) * 4 < whole * 1.05
    assert spec.kv_heads_per_device(4) == 1


# Public parameter counts (model cards / papers), in billions.
KNOWN_PARAMS = {
    "Llama-2-7b-hf": 6.74, "Llama-2-13b-hf": 13.02, "Llama-2-70b-hf": 68.98,
    "vicuna-13b-v1.5": 13.02, "CodeLlama-34b-Instruct-hf": 33.74,
    "Mistral-7B-Instruct-v0.2": 7.24, "Mixtral-8x7B-v0.1": 46.70, "Baichuan-7B": 7.00,
    "chatglm3-6b": 6.24, "gpt-j-6b": 6.05, "gpt-neox-20b": 20.55,
    "oasst-sft-4-pythia-12b-epoch-3.5": 11.85, "mpt-7b-chat": 6.65,
}


@pytest.mark.parametrize("name,billions", sorted(KNOWN_PARAMS.items()))
def test_table_figures_match_known_parameter_counts(name, billions):
    assert load_model_spec(name).param_count() / 1e9 == pytest.approx(billions, rel=0.01)


def test_moe_reads_only_routed_experts_at_small_batches():
    spec = load_model_spec("Mixtral-8x7B-v0.1")
    one, many = spec.decode_weight_bytes(1, 2), spec.decode_weight_bytes(512, 2)
    assert one < 0.35 * many  # 2 of 8 experts plus attention
    assert many == pytest.approx(spec.weight_bytes(2) - 32000 * 4096 / 2 * 2, rel=1e-3)
    assert np.all(np.diff(spec.decode_weight_bytes(np.arange(1, 64), 2)) >= 0)


def test_lookup_by_last_path_component_and_case():
    assert load_model_spec("lmsys/vicuna-13b-v1.5").name == "vicuna-13b-v1.5"
    assert load_model_spec("THUDM/ChatGLM3-6B").name == "chatglm3-6b"


def test_local_config_directory_and_file(tmp_path):
    model_dir = tmp_path / "my-llama"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(LLAMA2_7B))
    from_dir = load_model_spec(str(model_dir))
    from_file = load_model_spec(str(model_dir / "config.json"))
    assert from_dir.name == "my-llama"
    assert from_dir.param_count() == from_file.param_count() == 6_738_415_616


def test_other_families_config_keys():
    gptj = spec_from_hf_config({"model_type": "gptj", "n_embd": 4096, "n_layer": 28, "n_head": 16,
                                "n_inner": None, "vocab_size": 50400, "n_positions": 2048,
                                "tie_word_embeddings": False}, "gpt-j")
    assert (gptj.intermediate_size, gptj.gated_mlp, gptj.head_dim) == (16384, False, 256)
    glm = spec_from_hf_config({"model_type": "chatglm", "hidden_size": 4096, "num_layers": 28,
                               "num_attention_heads": 32, "multi_query_attention": True,
                               "multi_query_group_num": 2, "ffn_hidden_size": 13696,
                               "padded_vocab_size": 65024, "seq_length": 8192,
                               "kv_channels": 128}, "glm")
    assert (glm.num_kv_heads, glm.vocab_size, glm.gated_mlp, glm.max_position_embeddings) == (2, 65024, True, 8192)
    mpt = spec_from_hf_config({"model_type": "mpt", "d_model": 4096, "n_layers": 32, "n_heads": 32,
                               "expansion_ratio": 4, "vocab_size": 50432, "max_seq_len": 2048}, "mpt")
    assert (mpt.intermediate_size, mpt.tie_word_embeddings, mpt.gated_mlp) == (16384, True, False)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UserInputError, match="unknown model 'no-such-model-13b'.*config.json"):
        load_model_spec("no-such-model-13b")


def test_missing_figure_and_bad_tp_are_errors():
    with pytest.raises(UserInputError, match="hidden size"):
        spec_from_hf_config({"model_type": "llama", "num_hidden_layers": 2}, "broken")
    spec = spec_from_hf_config(LLAMA2_7B, "llama-7b")
    with pytest.raises(UserInputError, match="tensor-parallel degree 3"):
        spec.weight_bytes(3)
    assert not spec.supports_tp(3) and spec.supports_tp(4)


def test_unknown_architecture_without_hints_is_an_error():
    with pytest.raises(UserInputError, match="gated MLP"):
        spec_from_hf_config({"model_type": "strange", "hidden_size": 64, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "vocab_size": 100}, "strange")


def test_shipped_table_is_derived_from_the_shared_configs():
    source = shared_data("model_configs.json")
    if not source.is_file():
        pytest.skip("shared data not available")
    shipped = json.loads(package_data("model_specs.json").read_text())
    assert shipped == derive_model_specs(source)
