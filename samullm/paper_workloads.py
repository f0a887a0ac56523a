"""Applications shaped like the SamuLLM paper's experiments, built from the shared traces.

- ensemble: eight chat models of 6-13B parameters (those with A100 profiles in the shared data)
  answer the same ShareGPT prompts (prompts of at most 1,024 tokens, so 2,048-token models can
  answer), then a judge (chatglm3-6b, 8K context) reads every answer of a row;
- routing: a small router (Llama-2-7b-chat) picks one of five experts of 6B to 70B per request;
- chain: a 13B summariser over arXiv papers cut into 1,024-token chunks (node i reads chunk i and
  summary i-1), then a 70B evaluator reads the summaries;
- mixed: the chain and the ensemble in one application, over their two datasets.

The builders return plain dicts (the same shape as the YAML files under examples/), so the
benchmark can vary prompts and max_tokens.
"""

from __future__ import annotations

from typing import Any

from samullm.graph import Application, application_from_dict

SHAREGPT = "shared:traces/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
ARXIV = "shared:traces/arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"

ENSEMBLE_MODELS = [
    "vicuna-13b-v1.5",
    "oasst-sft-4-pythia-12b-epoch-3.5",
    "alpaca-13b",
    "baize-v2-13b",
    "koala-13B-HF",
    "dolly-v2-12b",
    "chatglm3-6b",
    "Llama-2-7b-chat-hf",
]
JUDGE_MODEL = "chatglm3-6b"
ROUTER_MODEL = "Llama-2-7b-chat-hf"
EXPERTS = [  # (node name, model): five sizes, 6B to 70B
    ("expert_70b", "Llama-2-70b-chat-hf"),
    ("expert_moe", "Mixtral-8x7B-Instruct-v0.1"),
    ("expert_13b", "vicuna-13b-v1.5"),
    ("expert_7b", "Llama-2-7b-chat-hf"),
    ("expert_6b", "chatglm3-6b"),
]
SUMMARISER = "vicuna-13b-v1.5"
EVALUATOR = "Llama-2-70b-chat-hf"


SHORT_NAMES = {
    "vicuna-13b-v1.5": "vicuna_13b", "oasst-sft-4-pythia-12b-epoch-3.5": "oasst_12b",
    "alpaca-13b": "alpaca_13b", "baize-v2-13b": "baize_13b", "koala-13B-HF": "koala_13b",
    "dolly-v2-12b": "dolly_12b", "chatglm3-6b": "chatglm3_6b", "Llama-2-7b-chat-hf": "llama2_7b",
}


def _node_name(model: str) -> str:
    return SHORT_NAMES.get(model) or "".join(c if c.isalnum() else "_" for c in model.lower()).strip("_")


def ensemble_nodes(num_models: int, max_tokens: int, dataset: str | None = None) -> list[dict[str, Any]]:
    nodes = []
    for model in ENSEMBLE_MODELS[:num_models]:
        nodes.append({
            "name": _node_name(model), "model": model, "dataset": dataset,
            "prompt": "### Human: {{ prompt }}\n### Assistant:",
            "sampling": {"max_tokens": max_tokens, "temperature": 1.0},
        })
    answers = "\n".join(f"Answer {i + 1}: {{{{ {n['name']} }}}}" for i, n in enumerate(nodes))
    nodes.append({
        "name": "judge", "model": JUDGE_MODEL, "dataset": dataset,
        "prompt": "Question: {{ prompt }}\n" + answers + "\nWhich answer is best? Reply with its number and one reason.",
        "sampling": {"max_tokens": 64, "temperature": 0.0},
        "engine": {"max_model_len": 8192},
    })
    return nodes


def ensemble(num_prompts: int = 1000, max_tokens: int = 256, num_models: int = 8, seed: int = 0) -> dict[str, Any]:
    return {
        "name": f"ensemble-{num_prompts}-{max_tokens}",
        "dataset": {"trace": {"path": SHAREGPT, "num_rows": num_prompts, "seed": seed, "max_prompt_tokens": 1024}},
        "nodes": [dict(n, dataset=None) for n in ensemble_nodes(num_models, max_tokens)],
    }


def routing(num_requests: int = 10000, max_tokens: int = 256, seed: int = 0) -> dict[str, Any]:
    labels = ", ".join(name.split("_")[1] for name, _ in EXPERTS)
    nodes = [{
        "name": "router", "model": ROUTER_MODEL,
        "prompt": "Request: {{ prompt }}\nWhich expert should answer it (" + labels + ")? Reply with one word.",
        "sampling": {"max_tokens": 4, "temperature": 0.0},
    }]
    shares = [0.15, 0.2, 0.25, 0.2, 0.2]
    for (name, model), share in zip(EXPERTS, shares, strict=True):
        nodes.append({
            "name": name, "model": model, "prompt": "### Human: {{ prompt }}\n### Assistant:",
            "route": {"router": "router", "equals": name.split("_")[1], "share": share},
            "sampling": {"max_tokens": max_tokens},
        })
    return {
        "name": f"routing-{num_requests}-{max_tokens}",
        "dataset": {"trace": {"path": SHAREGPT, "num_rows": num_requests, "seed": seed, "max_prompt_tokens": 2048}},
        "nodes": nodes,
    }


def chain_nodes(num_chunks: int, max_tokens: int, dataset: str | None = None) -> list[dict[str, Any]]:
    nodes = []
    for i in range(num_chunks):
        prev = f"Summary so far: {{{{ summarize_{i - 1} }}}}\n" if i else ""
        nodes.append({
            "name": f"summarize_{i}", "model": SUMMARISER, "dataset": dataset,
            "prompt": prev + f"Next part of the paper: {{{{ chunks[{i}] }}}}\nWrite an updated summary.",
            "where": f"chunks|length > {i}" if i else None,
            "sampling": {"max_tokens": max_tokens},
        })
    reads = "".join(f"{{{{ summarize_{i} }}}}\n" for i in range(num_chunks))
    nodes.append({
        "name": "evaluate", "model": EVALUATOR, "dataset": dataset,
        "prompt": "Rate the faithfulness of these successive summaries from 1 to 10:\n" + reads,
        "sampling": {"max_tokens": 64},
    })
    return nodes


def chain(num_documents: int = 1000, num_chunks: int = 4, max_tokens: int = 256, seed: int = 0) -> dict[str, Any]:
    return {
        "name": f"chain-{num_documents}-{num_chunks}",
        "dataset": {"trace": {"path": ARXIV, "num_rows": num_documents, "seed": seed, "column": "chunks",
                              "chunk_tokens": 1024, "max_chunks": num_chunks}},
        "nodes": [dict(n, dataset=None) for n in chain_nodes(num_chunks, max_tokens)],
    }


def mixed(num_prompts: int = 1000, num_documents: int = 1000, max_tokens: int = 256, seed: int = 0) -> dict[str, Any]:
    ens = ensemble(num_prompts, max_tokens, seed=seed)
    ch = chain(num_documents, max_tokens=max_tokens, seed=seed)
    return {
        "name": f"mixed-{num_prompts}-{num_documents}",
        "datasets": {"questions": ens["dataset"], "papers": ch["dataset"]},
        "nodes": [dict(n, dataset="questions") for n in ens["nodes"]] + [dict(n, dataset="papers") for n in ch["nodes"]],
    }


def build(data: dict[str, Any]) -> Application:
    clean = {**data, "nodes": [{k: v for k, v in n.items() if v is not None} for n in data["nodes"]]}
    return application_from_dict(clean, source=data.get("name", "workload"))
