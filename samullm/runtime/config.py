"""A runner configuration from command-line style options (shared by `samullm run` and
`samullm runner`)."""

from __future__ import annotations

from pathlib import Path

from samullm.errors import UserInputError


def make_config(devices: str = "cpu", home: str | None = None, store: str | None = None,
                results: str | None = None, resume: bool = True, **options):
    """devices: "cpu" (each usable core a device), "gpu" (each GPU), or a node file. home:
    default $SAMULLM_HOME or ./.samullm. Other keyword options go to RunnerConfig."""
    from costmodel.hardware import resolve_node

    from samullm.devices import resolve_device_set
    from samullm.runner import RunnerConfig
    from samullm.service import default_home

    device_set = resolve_device_set(devices)
    try:
        node_spec = resolve_node(devices)
    except UserInputError as err:
        raise UserInputError(f"--devices {devices!r}: {err}") from None
    if node_spec.num_devices != len(device_set.device_ids):
        # "cpu": one device per usable core on both sides; a file may list fewer cores.
        raise UserInputError(
            f"--devices {devices!r}: the node has {node_spec.num_devices} devices but "
            f"{len(device_set.device_ids)} can be bound"
        )
    return RunnerConfig(
        devices=device_set, node_spec=node_spec, home=Path(home) if home else default_home(),
        store_url=store, results_uri=results, resume=resume, **options,
    )
