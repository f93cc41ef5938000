"""An emulated Apache Pinot controller: the REST subset az-agent uses, with real segment files.

Same paths, parameters, JSON shapes, status codes and ``{"code","error"}`` bodies as the
controller (``/work/shared/reference/pinot-controller-api.md``): health; tables (list, config,
create, delete) and schemas (list, get, create, delete); segments (list, ZK metadata in bulk and
one by one, CRC map, download, delete); uploads (``POST /v2/segments`` and ``/segments``,
multipart SEGMENT mode with the new / refresh / same-CRC / ``allowRefresh`` / ``If-Match`` /
``REFRESH_ONLY`` rules); ideal state and external view; realtime pause, resume (with
``consumeFrom``), pause status, consuming-segments info, consumer watermarks and force commit;
instances, live instances, one instance's config and table (ingestion) status, the API a zone
health probe uses (``instance_routes.py`` says where each comes from in Pinot's source).
Segment tarballs live on disk under ``<data>/deepstore`` with Pinot's v3 layout, a
``metadata.properties`` and a ``creation.meta`` carrying the true CRC; state survives restarts in
``<data>/state.json``. Emulator-only controls live under ``/_emulator/`` (see ``admin.py``).

What it leaves out of Pinot:

* no query engine or minions: nothing answers SQL, ``/query`` does not exist; the one broker
  (``Broker_127.0.0.1_8099``) exists only as an instance that is live or not;
* no servers, Helix or ZooKeeper: one fake server instance holds every replica, the external
  view equals the ideal state at once (a dead server does not leave it), replication only
  shows in ZK fields; liveness changes only through ``/_emulator/instances``; no rebalance,
  reload, reset, tiers, retention manager, segment lineage or tasks;
* no stream: "Kafka" is a per-topic offset counter; a consuming segment holds no rows, and
  consumption happens only when a segment commits (on the generator timer, on a pause's
  force-commit, ``forceCommit``, or ``POST /_emulator/tables/{t}/commit``);
* no deep store other than the local directory; no URI or METADATA pushes, batch uploads,
  encryption (``CRYPTER``), parallel-push locks or custom-map headers; lz4/zstd tarballs are
  refused;
* no pauseless consumption (no ``COMMITTING`` state), no upsert/dedup, no multi-topic tables;
* table configs and schemas are checked only as far as the reference lists (required keys,
  schema present, time column, stream keys, compatibility of schema columns); no tenants,
  instance assignment or index checks; no ``database`` header, no ``/tableConfigs``;
* table deletion removes segment files at once (no ``Deleted_Segments`` retention) and does not
  leave an external view behind;
* authentication is one static Basic or Bearer credential, not Pinot's access-control plugins;
* ``segment.download.url`` records the emulator's address when the segment was stored: a restart
  on another port leaves old URLs stale (downloads through the API are unaffected).
"""

from az_agent.emulators.pinot.cluster import EmulatorOptions
from az_agent.emulators.pinot.seed import SeedTable
from az_agent.emulators.pinot.server import EmulatorAuth, PinotEmulator
from az_agent.emulators.pinot.state import GeneratorSpec

__all__ = ["EmulatorAuth", "EmulatorOptions", "GeneratorSpec", "PinotEmulator", "SeedTable"]
