"""The cluster's members as Helix knows them: instance configs and which instances are live.

Pinot keeps an ``InstanceConfig`` per registered instance (``/CONFIGS/PARTICIPANT``) and an
ephemeral ``LIVEINSTANCES`` node per running one; the controller's instance API reads both
(``PinotHelixResourceManager.getAllInstances`` / ``getAllLiveInstances``). The emulator has one
controller (itself), one broker and the one server every replica sits on (``state.SERVER``);
liveness and consumer state change only through ``/_emulator/`` (a test killing a broker),
never by themselves. None of it is persisted: a restarted emulator starts with all live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from az_agent.emulators.pinot.state import SERVER

HOST = "127.0.0.1"
BROKER = f"Broker_{HOST}_8099"
NOT_SET_PORT = -1
"""``Instance.NOT_SET_GRPC_PORT_VALUE`` / ``NOT_SET_ADMIN_PORT_VALUE``."""
NOT_CONSUMING = "NOT_CONSUMING"


@dataclass
class InstanceRecord:
    """One ``InstanceConfig`` (the fields ``GET /instances/{name}`` shows) and its liveness."""

    name: str
    port: int
    tags: list[str]
    grpc_port: int = NOT_SET_PORT
    admin_port: int = NOT_SET_PORT
    query_service_port: int = NOT_SET_PORT
    query_mailbox_port: int = NOT_SET_PORT
    enabled: bool = True
    live: bool = True

    def info(self) -> dict[str, Any]:
        """``PinotInstanceRestletResource.getInstance``'s body, keys in its order."""
        return {
            "instanceName": self.name,
            "hostName": HOST,
            "enabled": self.enabled,
            "port": self.port,
            "tags": self.tags,
            "pools": None,
            "grpcPort": self.grpc_port,
            "adminPort": self.admin_port,
            "queryServicePort": self.query_service_port,
            "queryMailboxPort": self.query_mailbox_port,
            "shutdownInProgress": False,
            "systemResourceInfo": None,
        }


@dataclass
class Helix:
    """Registered instances in registration order (ZK child order is arbitrary in Pinot)."""

    instances: dict[str, InstanceRecord] = field(default_factory=dict)
    stalled: set[str] = field(default_factory=set)
    """REALTIME tables (with type) whose consumers report ``NOT_CONSUMING``: a stream that
    cannot be read, as the server's ``RealtimeSegmentDataManager`` reports it."""

    @classmethod
    def default(cls) -> Helix:
        helix = cls()
        helix.add(InstanceRecord(BROKER, 8099, ["DefaultTenant_BROKER"]))
        helix.add(
            InstanceRecord(
                SERVER,
                8098,
                ["DefaultTenant_OFFLINE", "DefaultTenant_REALTIME"],
                grpc_port=8090,
                admin_port=8097,
                query_service_port=8421,
                query_mailbox_port=8442,
            )
        )
        return helix

    def add(self, record: InstanceRecord) -> None:
        self.instances[record.name] = record

    def add_controller(self, port: int) -> None:
        """The emulator itself, once its port is known (``Controller_<host>_<port>``)."""
        self.add(InstanceRecord(f"Controller_{HOST}_{port}", port, ["controller"]))

    def is_live(self, name: str) -> bool:
        record = self.instances.get(name)
        return record is not None and record.live

    def consumer_state(self, table: str) -> str | None:
        """What the server says of a consuming segment of ``table``; None when it does not
        answer (not live)."""
        if not self.is_live(SERVER):
            return None
        return NOT_CONSUMING if table in self.stalled else "CONSUMING"
