"""`SamuLLMHook`: where the SamuLLM runner is and its secret, as a `samullm.client.RunnerClient`.

The runner is found through an Airflow connection (default id `samullm_default`):
- `host` is the runner's URL (`http://127.0.0.1:8765`), or a host name with `port` and `schema`
  (http/https) beside it; `password` is the runner's shared secret;
- e.g. `AIRFLOW_CONN_SAMULLM_DEFAULT='{"conn_type": "samullm", "host": "http://127.0.0.1:8765",
  "password": "<secret>"}'`.
Without that connection the hook uses the runner's own defaults, as `samullm runner` on this
machine would: `SAMULLM_RUNNER_URL` (else http://127.0.0.1:8795) and the secret in
`SAMULLM_RUNNER_SECRET` or `$SAMULLM_HOME/runner.secret`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from samullm.client import AsyncRunnerClient, RunnerClient
from samullm.errors import UserInputError
from samullm.service import DEFAULT_HOST, DEFAULT_PORT, URL_ENV, load_secret

DEFAULT_CONN_ID = "samullm_default"


@dataclass(frozen=True)
class RunnerEndpoint:
    url: str
    secret: str | None
    source: str  # where the values came from, for error messages

    def client(self) -> RunnerClient:
        return RunnerClient(self.url, self.secret)

    def async_client(self) -> AsyncRunnerClient:
        return AsyncRunnerClient(self.url, self.secret)


def endpoint_from_connection(conn: Any) -> RunnerEndpoint:
    """The runner's URL and secret from an Airflow connection (see the module docstring)."""
    host = (conn.host or "").strip()
    if not host:
        raise ValueError(f"connection {conn.conn_id!r} has no host: set it to the runner's URL, e.g. http://127.0.0.1:8765")
    if "://" in host:
        parts = urlsplit(host)
        url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        if conn.port and not parts.port:
            url = f"{parts.scheme}://{parts.netloc}:{conn.port}{parts.path.rstrip('/')}"
    else:
        scheme = conn.schema or "http"
        url = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
    return RunnerEndpoint(url, conn.password or None, f"Airflow connection {conn.conn_id!r}")


def default_endpoint() -> RunnerEndpoint:
    """What a runner started on this machine with its defaults would use."""
    import os

    url = os.environ.get(URL_ENV, f"http://{DEFAULT_HOST}:{DEFAULT_PORT}")
    try:
        secret: str | None = load_secret()
    except UserInputError:
        secret = None  # the runner will refuse the call and the message says which secret to set
    return RunnerEndpoint(url, secret, f"${URL_ENV} or the default, and the runner's secret (no Airflow connection {DEFAULT_CONN_ID!r})")


class SamuLLMHook(BaseHook):
    """Talks to the SamuLLM runner; the only Airflow-side code that holds its address."""

    conn_name_attr = "samullm_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "samullm"
    hook_name = "SamuLLM runner"

    def __init__(self, samullm_conn_id: str = DEFAULT_CONN_ID) -> None:
        super().__init__()
        self.samullm_conn_id = samullm_conn_id

    def endpoint(self) -> RunnerEndpoint:
        try:
            conn = self.get_connection(self.samullm_conn_id)
        except AirflowNotFoundException:
            return default_endpoint()
        return endpoint_from_connection(conn)

    async def aendpoint(self) -> RunnerEndpoint:
        """The same from a trigger (async: must not block the triggerer's event loop)."""
        try:
            conn = await self.aget_connection(self.samullm_conn_id)
        except AirflowNotFoundException:
            return default_endpoint()
        return endpoint_from_connection(conn)

    def get_conn(self) -> RunnerClient:
        return self.endpoint().client()
