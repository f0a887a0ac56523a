"""Engines a finished node left loaded, for the next node of the same model to take over.

Every engine worker is started with a handoff folder: when its rows are done it does not exit
but waits with its engine loaded (`samullm.worker`, `JobSpec.handoff_dir`). When all replicas
of a node's launch end that way and the node succeeds, the runner keeps them as one
`IdleEngine` on the launch's placement, holding its devices, and reports it to the planner as a
warm engine (`state.WarmEngine`); the planner counts no load for a node of the same model and
engine options that it places on exactly those devices with the same plan (the runtime's
coster has `reuse_engines` on). If the next plan launches such a node there, its rows are
handed to the waiting workers; otherwise the engine is told to exit and its devices are freed
once its processes are gone. An idle engine is kept only while the plan has a node take it
over before anything else needs its devices (`wanted`), so none waits for nothing; a worker
also ends itself after its idle timeout.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from samullm.runtime.reconcile import Placement
from samullm.worker.handle import EngineWorker
from samullm.worker.messages import EngineOptions, Handoff


def engine_key(model: str, options: EngineOptions) -> str:
    """What must be equal for one node to run on another's engine (devices and TP aside)."""
    return f"{model}|{options.model_dump_json()}"


@dataclass
class IdleEngine:
    serial: int  # names its device-pool owners: ("idle", serial, replica)
    app_run_id: str
    node: str  # the node that left it
    key: str
    placement: Placement
    workers: list[EngineWorker]  # one per replica, in placement order
    closing: bool = False  # told to exit; its devices are held until its processes are gone

    def owner(self, replica: int) -> tuple:
        return ("idle", self.serial, replica)

    def alive(self) -> bool:
        return all(w.is_alive() for w in self.workers)

    def exited(self) -> bool:
        return not any(w.is_alive() for w in self.workers)

    def close(self) -> None:
        """Tell every worker to exit (it shuts its engine down and exits)."""
        if self.closing:
            return
        self.closing = True
        for w in self.workers:
            if w.is_alive():
                try:
                    w.hand_off(Handoff(exit=True))
                except OSError:  # its folder is gone: it will end on its idle timeout or SIGTERM
                    w.kill()


def wanted(engine: IdleEngine, stages: Iterable[Iterable[tuple[str, Placement, bool]]]) -> bool:
    """Whether the plan's stages (each member as engine key, placement, and whether the stage
    launches it) run a node on this engine as it is: the first stage that uses any of its
    devices launches a node of its key on exactly its placement. (A warm engine stays until
    something else needs its devices, as the planner's timeline assumes.)"""
    devices = set(engine.placement.devices)
    for members in stages:
        touching = [(key, placement, launch) for key, placement, launch in members
                    if devices & set(placement.devices)]
        if touching:
            return any(launch and key == engine.key and placement == engine.placement
                       for key, placement, launch in touching)
    return False
