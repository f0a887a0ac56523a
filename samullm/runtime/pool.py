"""The runner's devices: who holds which, so that no device is ever booked twice.

Every engine worker holds its devices from before it starts until its process (and its rank
processes) have exited; a worker being stopped keeps them until then. Owners are opaque
hashable keys (the runner uses (app run, node, replica)).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class DevicePool:
    def __init__(self, device_ids: Iterable[int]) -> None:
        self.device_ids = tuple(sorted(int(d) for d in device_ids))
        if len(set(self.device_ids)) != len(self.device_ids):
            raise ValueError(f"device ids repeat: {self.device_ids}")
        self._holder: dict[int, Hashable] = {}

    def free(self) -> set[int]:
        return set(self.device_ids) - set(self._holder)

    def busy(self) -> dict[int, Hashable]:
        """Device id -> its holder."""
        return dict(self._holder)

    def held_by(self, owner: Hashable) -> set[int]:
        return {d for d, o in self._holder.items() if o == owner}

    def try_acquire(self, owner: Hashable, devices: Iterable[int]) -> bool:
        """Give `owner` all of `devices` if every one is free (or already its own); else
        nothing. Unknown device ids are an error."""
        wanted = {int(d) for d in devices}
        unknown = wanted - set(self.device_ids)
        if unknown:
            raise ValueError(f"unknown device ids {sorted(unknown)}; this pool has {list(self.device_ids)}")
        if any(self._holder.get(d, owner) != owner for d in wanted):
            return False
        for d in wanted:
            self._holder[d] = owner
        return True

    def release(self, owner: Hashable) -> set[int]:
        """Free every device `owner` holds; return them."""
        mine = self.held_by(owner)
        for d in mine:
            del self._holder[d]
        return mine

    def transfer(self, owner: Hashable, new_owner: Hashable) -> set[int]:
        """Hand every device `owner` holds to `new_owner` (no moment when they are free)."""
        mine = self.held_by(owner)
        for d in mine:
            self._holder[d] = new_owner
        return mine
