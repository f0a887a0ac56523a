"""`SamuLLMNodeTrigger`: waits in the triggerer for a node of a run to finish on the runner.

It polls the runner's node status, logs a progress line whenever the node's state or row count
changes (the triggerer merges these lines into the task's log), and fires one event when the
node is terminal, or when the runner has not answered for `unreachable_timeout` seconds.

This module must stay importable by the triggerer: it lives in the installed package, never in
the dags folder (the triggerer cannot import from there).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from samullm.api import NodeStatus
from samullm_operators.hooks import DEFAULT_CONN_ID, SamuLLMHook
from samullm_operators.progress import progress_line
from samullm_operators.runner_calls import RunnerUnreachable, acall_runner


class SamuLLMNodeTrigger(BaseTrigger):
    def __init__(self, app_run_id: str, node: str, conn_id: str = DEFAULT_CONN_ID,
                 poll_interval: float = 2.0, unreachable_timeout: float = 120.0) -> None:
        super().__init__()
        self.app_run_id = app_run_id
        self.node = node
        self.conn_id = conn_id
        self.poll_interval = poll_interval
        self.unreachable_timeout = unreachable_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"app_run_id": self.app_run_id, "node": self.node, "conn_id": self.conn_id,
             "poll_interval": self.poll_interval, "unreachable_timeout": self.unreachable_timeout},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        endpoint = await SamuLLMHook(self.conn_id).aendpoint()
        client = endpoint.async_client()
        last_line = None
        unreachable_since: float | None = None
        while True:
            # The first look comes after one interval: an engine takes seconds to start anyway.
            await asyncio.sleep(self.poll_interval)
            try:
                status: NodeStatus = await acall_runner(endpoint, client.status, self.app_run_id, self.node)
            except RunnerUnreachable as err:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                self.log.warning("%s (retrying for %.0f s more)", err, self.unreachable_timeout - (now - unreachable_since))
                if now - unreachable_since >= self.unreachable_timeout:
                    yield TriggerEvent({"status": "error", "node": self.node, "message": str(err)})
                    return
                continue
            except Exception as err:  # bad secret, unknown run: nothing to wait for
                yield TriggerEvent({"status": "error", "node": self.node, "message": str(err)})
                return
            unreachable_since = None
            line = progress_line(status)
            if line != last_line:
                self.log.info("%s", line)
                last_line = line
            if status.terminal:
                yield TriggerEvent({"status": status.state, "node": self.node,
                                    "node_status": status.model_dump(mode="json")})
                return
