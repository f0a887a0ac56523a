"""Request sets from trace CSVs."""

from __future__ import annotations

import numpy as np
import pytest

from costmodel.errors import UserInputError
from costmodel.requests import RequestSet, load_request_csv, trace_path

SHAREGPT = trace_path("sharegpt_8k_filtered_stats_llama2_tokenizer")


def write(tmp_path, text: str, name: str = "requests.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_trace_columns(tmp_path):
    path = write(tmp_path,
                 "num_prefill_tokens,num_decode_tokens,pd_ratio\n74,918,0.08\n290,905,0.3\n")
    requests = load_request_csv(path)
    assert requests.input_lens.tolist() == [74, 290]
    assert requests.output_lens.tolist() == [918, 905]
    assert len(requests) == 2 and requests.source == "requests.csv"


def test_outputs_are_optional(tmp_path):
    requests = load_request_csv(write(tmp_path, "arrived_at,num_prefill_tokens\n0.0,12\n1.5,7.0\n"))
    assert requests.input_lens.tolist() == [12, 7] and requests.output_lens is None


def test_missing_column_is_named(tmp_path):
    path = write(tmp_path, "prompt_tokens,output_tokens\n3,4\n")
    with pytest.raises(UserInputError, match="no 'num_prefill_tokens' column.*prompt_tokens"):
        load_request_csv(path)


def test_bad_values_are_named_with_their_line(tmp_path):
    with pytest.raises(UserInputError, match="line 3: num_decode_tokens"):
        load_request_csv(write(tmp_path, "num_prefill_tokens,num_decode_tokens\n3,4\n5,x\n"))
    with pytest.raises(UserInputError, match="line 2: num_prefill_tokens"):
        load_request_csv(write(tmp_path, "num_prefill_tokens\n0\n"))
    with pytest.raises(UserInputError, match="no requests"):
        load_request_csv(write(tmp_path, "num_prefill_tokens\n"))
    with pytest.raises(UserInputError, match="does not exist"):
        load_request_csv(tmp_path / "nowhere.csv")


def test_subsample_is_reproducible_and_keeps_order():
    requests = RequestSet(np.arange(1, 101), np.arange(101, 201), "r")
    a, b = requests.subsample(10, seed=3), requests.subsample(10, seed=3)
    assert a.input_lens.tolist() == b.input_lens.tolist()
    assert np.all(np.diff(a.input_lens) > 0)
    assert np.array_equal(a.output_lens - a.input_lens, np.full(10, 100))
    assert requests.subsample(10, seed=4).input_lens.tolist() != a.input_lens.tolist()
    with pytest.raises(UserInputError, match="cannot draw 101"):
        requests.subsample(101)


def test_split_is_disjoint_and_complete():
    requests = RequestSet(np.arange(1, 1001))
    first, second = requests.split(0.5, seed=1)
    assert len(first) == len(second) == 500
    assert sorted(np.r_[first.input_lens, second.input_lens].tolist()) == list(range(1, 1001))


def test_fitting_drops_requests_that_exceed_max_model_len():
    requests = RequestSet(np.array([10, 50, 100, 60]), np.array([10, 60, 1, 40]))
    assert requests.fitting(100).input_lens.tolist() == [10, 60]
    assert RequestSet(np.array([10, 100])).fitting(100).input_lens.tolist() == [10]


@pytest.mark.skipif(not SHAREGPT.is_file(), reason="shared data folder not found")
def test_sharegpt_trace_loads():
    requests = load_request_csv(SHAREGPT)
    assert len(requests) == 30_731
    assert requests.output_lens.max() == 1024  # the trace's cap
    by_name = load_request_csv("sharegpt_8k_filtered_stats_llama2_tokenizer.csv")
    assert by_name.source == SHAREGPT.name
