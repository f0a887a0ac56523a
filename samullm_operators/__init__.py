"""Airflow operators for SamuLLM: one LLM node per task, planned and run by the SamuLLM runner.

Import from here in DAG files: `from samullm_operators import SamuLLMNodeOperator`.
"""

from samullm_operators.hooks import SamuLLMHook
from samullm_operators.operators import SamuLLMNodeOperator
from samullm_operators.params import model_param

__all__ = ["SamuLLMHook", "SamuLLMNodeOperator", "model_param"]
