"""`samullm runner`: the long-lived runner that owns this node's devices, over HTTP."""

from __future__ import annotations

import argparse
import logging
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    from samullm.service import DEFAULT_HOST, DEFAULT_PORT

    parser = subparsers.add_parser(
        "runner",
        help="serve the SamuLLM runner (HTTP API for Airflow and clients)",
        description="Run the SamuLLM runner: it owns this node's devices, plans every registered "
                    "application run and executes it on engine workers. Clients authenticate with a "
                    "shared secret (--secret-file, $SAMULLM_RUNNER_SECRET, or <home>/runner.secret, "
                    "generated when absent).",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--devices", default="cpu", help="cpu | gpu | node file (default cpu)")
    parser.add_argument("--home", default=None, help="checkpoints, logs, secret, default store (default $SAMULLM_HOME or ./.samullm)")
    parser.add_argument("--store", default=None, help="SQLAlchemy URL of the store (default SQLite in the home)")
    parser.add_argument("--results", default=None, help="default results location: path or fsspec URL (default <home>/results)")
    parser.add_argument("--secret-file", default=None, help="file holding the shared secret")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from samullm.runner import Runner
    from samullm.runtime.config import make_config
    from samullm.service import SECRET_ENV, SECRET_FILE, load_secret, serve

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = make_config(args.devices, args.home, args.store, args.results)
    secret = load_secret(args.secret_file, config.home, create=True)
    runner = Runner(config)
    if args.secret_file:
        where = args.secret_file
    elif os.environ.get(SECRET_ENV):
        where = f"${SECRET_ENV}"
    else:
        where = config.home / SECRET_FILE
    print(f"SamuLLM runner on http://{args.host}:{args.port} — {config.node_spec.num_devices} "
          f"{config.devices.kind} devices, home {config.home}, secret from {where}", flush=True)
    serve(runner, secret, args.host, args.port, log_level=args.log_level)
    return 0
