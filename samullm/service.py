"""`samullm runner`: the runner behind an HTTP API (FastAPI, served by uvicorn).

Routes and models are in `samullm.api`; `samullm.client.RunnerClient` is their client. Every
route but /health needs `Authorization: Bearer <secret>`. The secret comes from --secret-file,
else $SAMULLM_RUNNER_SECRET, else `<home>/runner.secret`, which is generated (mode 600) when
absent; clients on the same machine read the same file. The runner binds to loopback by default.

Graceful shutdown (Ctrl-C, SIGTERM): uvicorn stops serving, then the runner stops every engine
worker (finished rows kept); active runs continue when a runner starts again on the same home.
"""

from __future__ import annotations

import hmac
import os
import secrets
from contextlib import asynccontextmanager
from pathlib import Path

from samullm import api
from samullm.errors import UserInputError

SECRET_ENV = "SAMULLM_RUNNER_SECRET"
URL_ENV = "SAMULLM_RUNNER_URL"
SECRET_FILE = "runner.secret"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8795
PUBLIC_PATHS = frozenset({"/health"})  # Airflow's api-server often takes 8080/8790, its log servers 8793/8794


def default_home() -> Path:
    return Path(os.environ.get("SAMULLM_HOME", ".samullm")).resolve()


def load_secret(secret_file: str | os.PathLike | None = None, home: str | os.PathLike | None = None,
                create: bool = False) -> str:
    """The runner's shared secret: the file given, else $SAMULLM_RUNNER_SECRET, else
    <home>/runner.secret (made with a random secret when `create` and absent)."""
    if secret_file is not None:
        path = Path(secret_file)
        if not path.is_file():
            raise UserInputError(f"secret file {str(path)!r} does not exist")
        secret = path.read_text().strip()
        if not secret:
            raise UserInputError(f"secret file {str(path)!r} is empty")
        return secret
    if os.environ.get(SECRET_ENV):
        return os.environ[SECRET_ENV].strip()
    path = Path(home or default_home()) / SECRET_FILE
    if path.is_file():
        return path.read_text().strip()
    if not create:
        raise UserInputError(
            f"no runner secret: set {SECRET_ENV}, or give the secret file ({path} is where "
            f"`samullm runner` writes one)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


def create_app(runner, secret: str, start_runner: bool = True):
    """The FastAPI app over `runner` (a samullm.runner.Runner). With start_runner, the app's
    lifespan starts the runner (resume, loop) and shuts it down (workers stopped)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    @asynccontextmanager
    async def lifespan(_app):
        if start_runner:
            runner.start()
        try:
            yield
        finally:
            if start_runner:
                runner.shutdown()

    app = FastAPI(title="SamuLLM runner", lifespan=lifespan)

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        # Before routing and body parsing: an unauthenticated caller learns nothing else.
        if request.url.path not in PUBLIC_PATHS:
            header = request.headers.get(api.SECRET_HEADER, "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                return JSONResponse(status_code=401, content={
                    "detail": "missing runner secret: send 'Authorization: Bearer <secret>'"})
            if not hmac.compare_digest(token.strip().encode(), secret.encode()):
                return JSONResponse(status_code=401, content={"detail": "wrong runner secret"})
        return await call_next(request)

    @app.exception_handler(UserInputError)
    async def bad_input(_request, err: UserInputError):
        return JSONResponse(status_code=400, content={"detail": str(err)})

    @app.exception_handler(KeyError)
    async def unknown(_request, err: KeyError):
        return JSONResponse(status_code=404, content={"detail": f"unknown run or node: {err.args[0] if err.args else err}"})

    # Handlers are plain functions: FastAPI runs them in its thread pool, so the runner's lock
    # (held while it plans) never blocks the event loop.
    @app.get("/health", response_model=api.Health)
    def health() -> api.Health:
        return runner.health()

    @app.post("/v1/apps", response_model=api.AppStatus)
    def register(body: api.RegisterApplication) -> api.AppStatus:
        return runner.register(body)

    @app.get("/v1/apps", response_model=list[api.AppStatus])
    def apps() -> list[api.AppStatus]:
        return runner.apps_status()

    @app.get("/v1/apps/{app_run_id}", response_model=api.AppView)
    def view(app_run_id: str) -> api.AppView:
        return runner.view(app_run_id)

    @app.post("/v1/apps/{app_run_id}/nodes/{node}/submit", response_model=api.NodeStatus)
    def submit(app_run_id: str, node: str, body: api.SubmitNode | None = None) -> api.NodeStatus:
        return runner.submit(app_run_id, node, body)

    @app.get("/v1/apps/{app_run_id}/nodes/{node}", response_model=api.NodeStatus)
    def node_status(app_run_id: str, node: str) -> api.NodeStatus:
        return runner.node_status(app_run_id, node)

    @app.post("/v1/apps/{app_run_id}/cancel", response_model=api.AppStatus)
    def cancel(app_run_id: str) -> api.AppStatus:
        return runner.cancel(app_run_id)

    @app.post("/v1/plan")
    def dry_run(body: api.DryRun) -> dict:
        return runner.dry_run(body).model_dump(mode="json")

    return app


def serve(runner, secret: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn handles SIGINT/SIGTERM; the lifespan stops the runner)."""
    import uvicorn

    uvicorn.run(create_app(runner, secret), host=host, port=port, log_level=log_level, lifespan="on")
