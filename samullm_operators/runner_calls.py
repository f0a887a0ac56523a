"""Runner calls with failures sorted by what Airflow should do about them.

`samullm.client` already words its errors (how to start a runner, which secret to check); this
adds where the address and secret came from (an Airflow connection or the defaults) and sorts
them: bad input and a refused secret fail the task for good (a retry fails the same way), an
unreachable runner or a runner error may pass with a retry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from samullm.client import RunnerAuthError, RunnerError, RunnerUnavailable
from samullm.errors import UserInputError

T = TypeVar("T")


class RunnerCallError(Exception):
    """A runner call that failed; the message is meant for the task log and the UI."""


class RunnerUnreachable(RunnerCallError):
    """Nothing answers, or the runner failed inside: worth retrying later."""


class RunnerBadInput(RunnerCallError):
    """The runner refused the request (bad application, wrong secret): retrying cannot help."""


class RunnerNotFound(RunnerBadInput):
    """The runner knows no such run or node."""


def _sorted_error(endpoint: Any, err: Exception) -> RunnerCallError:
    where = f" [runner {endpoint.url} from {endpoint.source}]"
    if isinstance(err, RunnerUnavailable):
        return RunnerUnreachable(f"{err}{where}")
    if isinstance(err, RunnerAuthError):
        return RunnerBadInput(f"{err}{where}")
    if isinstance(err, UserInputError):
        return RunnerBadInput(str(err))
    if isinstance(err, KeyError):
        return RunnerNotFound(str(err.args[0]) if err.args else str(err))
    return RunnerUnreachable(f"runner call failed: {type(err).__name__}: {err}{where}")


def call_runner(endpoint: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    try:
        return fn(*args, **kwargs)
    except (UserInputError, KeyError, RunnerError, httpx.HTTPError) as err:
        raise _sorted_error(endpoint, err) from None


async def acall_runner(endpoint: Any, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    try:
        return await fn(*args, **kwargs)
    except (UserInputError, KeyError, RunnerError, httpx.HTTPError) as err:
        raise _sorted_error(endpoint, err) from None
