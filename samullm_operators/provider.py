"""Provider metadata: lets Airflow list SamuLLM's operator, hook, trigger and connection type.

Registered through the `apache_airflow_provider` entry point of the installed package, so the
"SamuLLM runner" connection type appears in the UI's connection form and `airflow providers
list` shows the package. (The plugin has its own `airflow.plugins` entry point.)
"""

from __future__ import annotations

from typing import Any

INTEGRATION = "SamuLLM"


def get_provider_info() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("samullm")
    except PackageNotFoundError:  # a source checkout on sys.path
        installed = "0.0.0"
    return {
        "package-name": "samullm",
        "name": "SamuLLM",
        "description": "Multi-LLM offline inference planned into stages and run on vLLM engines by the SamuLLM runner.",
        "versions": [installed],
        "integrations": [{"integration-name": INTEGRATION, "tags": ["software"]}],
        "operators": [{"integration-name": INTEGRATION, "python-modules": ["samullm_operators.operators"]}],
        "hooks": [{"integration-name": INTEGRATION, "python-modules": ["samullm_operators.hooks"]}],
        "triggers": [{"integration-name": INTEGRATION, "python-modules": ["samullm_operators.triggers"]}],
        "connection-types": [{"connection-type": "samullm", "hook-class-name": "samullm_operators.hooks.SamuLLMHook",
                              "hook-name": "SamuLLM runner"}],
    }
