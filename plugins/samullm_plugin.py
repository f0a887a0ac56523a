"""`SamuLLMPlugin`: SamuLLM's JSON API and views in Airflow 3's UI.

Registered through the `airflow.plugins` entry point of the installed package; a copy of this
folder mounted as Airflow's plugins folder works too (`.airflowignore` keeps Airflow from
importing the helper modules on their own). Airflow loads plugins when a process starts: restart
the api-server after changing one.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from plugins.samullm_api import PREFIX, app

BUNDLE = f"{PREFIX}/static/samullm.js"


class SamuLLMPlugin(AirflowPlugin):
    name = "samullm"
    fastapi_apps = [{"app": app, "url_prefix": PREFIX, "name": "SamuLLM"}]
    react_apps = [
        # The names are the keys the bundle registers its components under.
        {"name": "SamuLLM stages", "bundle_url": BUNDLE, "destination": "dag_run", "url_route": "samullm-stages"},
        {"name": "SamuLLM node", "bundle_url": BUNDLE, "destination": "task_instance", "url_route": "samullm-node"},
        {"name": "SamuLLM dry run", "bundle_url": BUNDLE, "destination": "dag", "url_route": "samullm-dry-run"},
    ]
