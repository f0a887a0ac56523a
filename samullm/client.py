"""The one client of the runner's HTTP API (`samullm.api` lists the routes).

`RunnerClient(url, secret)` for plain code and operators, `AsyncRunnerClient` for Airflow
triggers (asyncio). Both raise:
- `RunnerUnavailable` when nothing answers at the URL (the message says how to start a runner);
- `RunnerAuthError` when the runner refuses the secret;
- `UserInputError` for bad input (the runner's message), `KeyError` for an unknown run or node;
- `RunnerError` for anything else the runner answers with an error.
`from_env()` builds one from $SAMULLM_RUNNER_URL and the secret `samullm runner` uses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from samullm import api
from samullm.errors import UserInputError
from samullm.schedule import Schedule

DEFAULT_TIMEOUT_S = 60.0  # registration plans the run: allow for a large application


class RunnerError(RuntimeError):
    """The runner answered with an error."""


class RunnerUnavailable(UserInputError):
    """Nothing answers at the runner's URL."""


class RunnerAuthError(UserInputError):
    """The runner refused the secret."""


def _default_url() -> str:
    import os

    from samullm.service import DEFAULT_HOST, DEFAULT_PORT, URL_ENV

    return os.environ.get(URL_ENV, f"http://{DEFAULT_HOST}:{DEFAULT_PORT}")


def _unavailable(url: str, err: Exception) -> RunnerUnavailable:
    from urllib.parse import urlparse

    port = urlparse(url).port
    return RunnerUnavailable(
        f"no SamuLLM runner answers at {url} ({type(err).__name__}); start one with "
        f"`samullm runner --port {port or 'PORT'}` (same SAMULLM_HOME, or give its secret), "
        f"or point {'SAMULLM_RUNNER_URL'} at a running one"
    )


def _check(response: httpx.Response, url: str) -> Any:
    if response.status_code < 400:
        return response.json()
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if response.status_code == 401:
        raise RunnerAuthError(f"the runner at {url} refused the request: {detail} (check the secret: "
                              f"SAMULLM_RUNNER_SECRET or the runner's runner.secret file)")
    if response.status_code == 400:
        raise UserInputError(str(detail))
    if response.status_code == 404:
        raise KeyError(str(detail))
    raise RunnerError(f"runner at {url} answered {response.status_code}: {detail}")


class _Routes:
    """Request shapes shared by the two clients."""

    def __init__(self, url: str, secret: str | None) -> None:
        self.url = url.rstrip("/")
        self.headers = {api.SECRET_HEADER: f"Bearer {secret}"} if secret else {}

    @staticmethod
    def register_body(app_run_id: str, application: dict | Any, results_uri: str | None, labels: dict | None,
                      context: dict | None, method: str) -> dict:
        if hasattr(application, "model_dump"):
            application = application.model_dump(mode="json", exclude_defaults=True)
        body = api.RegisterApplication(app_run_id=app_run_id, application=application, results_uri=results_uri,
                                       labels=labels or {}, context=context or {}, method=method)
        return body.model_dump(mode="json")


class RunnerClient(_Routes):
    def __init__(self, url: str | None = None, secret: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(url or _default_url(), secret)
        self._http = httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    @classmethod
    def from_env(cls, home: str | None = None) -> RunnerClient:
        from samullm.service import load_secret

        return cls(_default_url(), load_secret(home=home))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=json)
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            raise _unavailable(self.url, err) from None
        return _check(response, self.url)

    def health(self) -> api.Health:
        return api.Health.model_validate(self._call("GET", "/health"))

    def register(self, app_run_id: str, application: dict | Any, *, results_uri: str | None = None,
                 labels: dict | None = None, context: dict | None = None, method: str = "samullm") -> api.AppStatus:
        body = self.register_body(app_run_id, application, results_uri, labels, context, method)
        return api.AppStatus.model_validate(self._call("POST", "/v1/apps", body))

    def apps(self) -> list[api.AppStatus]:
        return [api.AppStatus.model_validate(a) for a in self._call("GET", "/v1/apps")]

    def view(self, app_run_id: str) -> api.AppView:
        return api.AppView.model_validate(self._call("GET", f"/v1/apps/{app_run_id}"))

    def submit(self, app_run_id: str, node: str, context: dict | None = None) -> api.NodeStatus:
        body = api.SubmitNode(context=context or {}).model_dump(mode="json")
        return api.NodeStatus.model_validate(self._call("POST", f"/v1/apps/{app_run_id}/nodes/{node}/submit", body))

    def status(self, app_run_id: str, node: str) -> api.NodeStatus:
        return api.NodeStatus.model_validate(self._call("GET", f"/v1/apps/{app_run_id}/nodes/{node}"))

    def cancel(self, app_run_id: str) -> api.AppStatus:
        return api.AppStatus.model_validate(self._call("POST", f"/v1/apps/{app_run_id}/cancel"))

    def dry_run(self, application: dict | Any, node_spec: str | None = None, baseline: str | None = None) -> Schedule:
        if hasattr(application, "model_dump"):
            application = application.model_dump(mode="json", exclude_defaults=True)
        body = api.DryRun(application=application, node_spec=node_spec, baseline=baseline).model_dump(mode="json")
        return Schedule.model_validate(self._call("POST", "/v1/plan", body))

    def wait_node(self, app_run_id: str, node: str, timeout: float, poll_s: float = 1.0) -> api.NodeStatus:
        """Poll until the node is success, failed or cancelled; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(app_run_id, node)
            if status.terminal:
                return status
            if time.monotonic() >= deadline:
                raise TimeoutError(f"node {node!r} of {app_run_id} still {status.state} after {timeout:g} s")
            time.sleep(poll_s)


class AsyncRunnerClient(_Routes):
    """The status calls a waiting Airflow trigger needs, without blocking its event loop."""

    def __init__(self, url: str | None = None, secret: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__(url or _default_url(), secret)
        self._timeout = timeout

    async def _call(self, method: str, path: str, json: Any = None) -> Any:
        async with httpx.AsyncClient(base_url=self.url, headers=self.headers, timeout=self._timeout) as http:
            try:
                response = await http.request(method, path, json=json)
            except (httpx.ConnectError, httpx.ConnectTimeout) as err:
                raise _unavailable(self.url, err) from None
        return _check(response, self.url)

    async def health(self) -> api.Health:
        return api.Health.model_validate(await self._call("GET", "/health"))

    async def status(self, app_run_id: str, node: str) -> api.NodeStatus:
        return api.NodeStatus.model_validate(await self._call("GET", f"/v1/apps/{app_run_id}/nodes/{node}"))

    async def view(self, app_run_id: str) -> api.AppView:
        return api.AppView.model_validate(await self._call("GET", f"/v1/apps/{app_run_id}"))

    async def wait_node(self, app_run_id: str, node: str, poll_s: float = 2.0, timeout: float | None = None) -> api.NodeStatus:
        start = time.monotonic()
        while True:
            status = await self.status(app_run_id, node)
            if status.terminal:
                return status
            if timeout is not None and time.monotonic() - start >= timeout:
                raise TimeoutError(f"node {node!r} of {app_run_id} still {status.state} after {timeout:g} s")
            await asyncio.sleep(poll_s)
