"""Auth, TLS, timeouts, transport failures, the old-controller fallback, and bounded memory."""

from __future__ import annotations

import hashlib
import ssl
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from az_agent.drivers.errors import Misconfigured, NotFound, Unavailable
from az_agent.drivers.pinot import (
    HttpPinotController,
    PinotCredentials,
    PinotSettings,
    TableRef,
    TableType,
    read_pinot_credentials,
)
from az_agent.emulators.pinot import EmulatorAuth, EmulatorOptions, PinotEmulator, SeedTable
from tests.integration.pinot.support import RawHttp
from tests.servers.tls import self_signed

EVENTS = TableRef("events", TableType.REALTIME)
LOGS = TableRef("logs", TableType.OFFLINE)
MiB = 1 << 20


async def test_basic_and_bearer_auth(tmp_path: Path) -> None:
    auth = EmulatorAuth(username="admin", password="s3cret", token="tok-1")
    secrets = tmp_path / "secrets"
    (secrets / "pinot-basic").mkdir(parents=True)
    (secrets / "pinot-basic" / "username").write_text("admin\n")
    (secrets / "pinot-basic" / "password").write_text("s3cret\n")
    (secrets / "pinot-token").mkdir()
    (secrets / "pinot-token" / "token").write_text("tok-1")
    (secrets / "empty").mkdir()
    async with PinotEmulator(
        tmp_path / "data", auth=auth, seed_tables=[SeedTable("events")]
    ) as emu:
        async with HttpPinotController(emu.url) as anonymous:
            await anonymous.health()  # /health needs no credentials, as in Pinot
            with pytest.raises(Misconfigured, match="HTTP 401"):
                await anonymous.list_tables()
        for secret in ("pinot-basic", "pinot-token"):
            credentials = await read_pinot_credentials(secrets, secret)
            settings = PinotSettings(controller_url=emu.url, auth_secret=secret)
            async with HttpPinotController.from_settings(settings, credentials) as client:
                assert await client.list_tables() == [EVENTS]
        wrong = PinotCredentials(username=SecretStr("admin"), password=SecretStr("nope"))
        async with HttpPinotController(emu.url, credentials=wrong) as client:
            with pytest.raises(Misconfigured, match="check the Pinot credentials"):
                await client.segments(EVENTS)
    assert await read_pinot_credentials(secrets, "") is None
    with pytest.raises(Misconfigured, match="needs key 'token'"):
        await read_pinot_credentials(secrets, "empty")
    with pytest.raises(Misconfigured, match="no directory"):
        await read_pinot_credentials(secrets, "missing")


async def test_tls_verification(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with PinotEmulator(tmp_path / "data", ssl_context=context) as emu:
        assert emu.url.startswith("https://127.0.0.1:")
        async with HttpPinotController(emu.url, ca_file=str(cert)) as trusted:
            await trusted.health()
            assert await trusted.list_tables() == []
        async with HttpPinotController(emu.url) as system_cas:
            with pytest.raises(Misconfigured, match="TLS failure"):
                await system_cas.health()
        async with HttpPinotController(emu.url, tls_verify=False) as unverified:
            await unverified.health()
        async with HttpPinotController(emu.url, ca_file=str(tmp_path / "no.pem")) as broken:
            with pytest.raises(Misconfigured, match="cannot load CA file"):
                await broken.health()


async def test_timeouts_and_transport_failures(
    emulator: PinotEmulator, http: RawHttp, tmp_path: Path
) -> None:
    await http.admin("POST", "/faults", json={"path": "^/tables$", "status": 0, "delay": 0.6})
    async with HttpPinotController(emulator.url, timeout_seconds=0.3) as impatient:
        with pytest.raises(Unavailable, match="timed out"):
            await impatient.list_tables()
    await http.admin(
        "POST", "/faults", json={"path": "^/schemas/", "status": 503, "message": "busy"}
    )
    async with HttpPinotController(emulator.url) as client:
        with pytest.raises(Unavailable, match="HTTP 503: busy"):
            await client.schema("events")
    async with HttpPinotController("http://127.0.0.1:9") as nowhere:
        with pytest.raises(Unavailable):
            await nowhere.health()


async def test_fallback_for_controllers_without_bulk_zk_metadata(
    emulator: PinotEmulator, client: HttpPinotController, http: RawHttp
) -> None:
    await emulator.cluster.commit_consuming("events_REALTIME", partition=0)
    bulk = sorted(await client.segments(EVENTS), key=lambda s: s.name)
    fault = {"path": "^/segments/[^/]+/zkmetadata$", "status": 404, "times": 50}
    await http.admin("POST", "/faults", json=fault)
    async with HttpPinotController(emulator.url) as old_style:
        assert sorted(await old_style.segments(EVENTS), key=lambda s: s.name) == bulk
        assert sorted(await old_style.segments(EVENTS), key=lambda s: s.name) == bulk
    # Only the first call tried /zkmetadata; the client then goes segment by segment.
    [armed] = await http.admin("GET", "/faults")
    assert armed["times"] == 49


async def test_segment_crcs_match_the_metadata_with_or_without_bulk_zk_metadata(
    emulator: PinotEmulator, client: HttpPinotController, http: RawHttp
) -> None:
    """The CRCs a rehydration plan compares: what :meth:`segments` says, from one bulk answer
    (no metadata built) or segment by segment on an old controller; consuming segments (no
    CRC yet) left out; a missing table is ``NotFound`` either way."""
    await emulator.cluster.commit_consuming("events_REALTIME", partition=0)
    await emulator.cluster.produce_segment("logs_OFFLINE")
    expected = {  # from the emulator's ZooKeeper, as Pinot would answer
        table: {
            name: segment.zk["segment.crc"]
            for name, segment in emulator.cluster.state.tables[
                table.name_with_type
            ].segments.items()
            if int(segment.zk.get("segment.crc", "-1")) >= 0
        }
        for table in (EVENTS, LOGS)
    }
    assert all(expected.values())
    assert len(expected[EVENTS]) < len(await client.segment_names(EVENTS))  # consuming ones
    absent = TableRef("absent", TableType.OFFLINE)
    for table, crcs in expected.items():
        assert await client.segment_crcs(table) == crcs
    with pytest.raises(NotFound):
        await client.segment_crcs(absent)
    fault = {"path": "^/segments/[^/]+/zkmetadata$", "status": 404, "times": 50}
    await http.admin("POST", "/faults", json=fault)
    async with HttpPinotController(emulator.url) as old_style:
        for table, crcs in expected.items():
            assert await old_style.segment_crcs(table) == crcs
        with pytest.raises(NotFound):
            await old_style.segment_crcs(absent)
    [armed] = await http.admin("GET", "/faults")
    assert armed["times"] == 49  # one bulk request, then segment by segment


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    import asyncio

    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, MiB):
            yield chunk


@pytest.mark.parametrize("size_mib", [16, 48])
async def test_multi_megabyte_segment_streams_with_bounded_memory(
    tmp_path: Path, size_mib: int
) -> None:
    size = size_mib * MiB
    options = EmulatorOptions(segment_size=size)
    seeds = [SeedTable("events", "REALTIME", 1), SeedTable("logs", "OFFLINE")]
    async with (
        PinotEmulator(tmp_path / "data", options=options, seed_tables=seeds) as emu,
        HttpPinotController(emu.url) as client,
    ):
        [name] = await emu.cluster.commit_consuming("events_REALTIME")
        [segment] = await client.backup_ready_segments(EVENTS)
        assert segment.size_bytes is not None
        assert segment.size_bytes > size - MiB
        copy = tmp_path / "copy.tar.gz"
        digest = hashlib.sha256()

        tracemalloc.start()
        try:
            async with client.download_segment(EVENTS, name) as download:
                with copy.open("wb") as sink:
                    async for chunk in download:
                        digest.update(chunk)
                        sink.write(chunk)
            _, download_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            logs = TableRef("logs", TableType.OFFLINE)
            await client.upload_segment(logs, _file_chunks(copy), segment_name=name)
            _, upload_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        blob = emu.data_dir / "deepstore" / "events" / name
        assert digest.hexdigest() == hashlib.sha256(blob.read_bytes()).hexdigest()
        uploaded = emu.data_dir / "deepstore" / "logs" / name
        assert uploaded.read_bytes() == blob.read_bytes()
        assert (await client.segment(logs, name)).crc == segment.crc
        # Client and emulator share this process; together they hold a few 1 MiB chunks, the
        # same for 16 and 48 MiB segments, and less than one whole segment.
        assert download_peak < 12 * MiB, download_peak
        assert upload_peak < 12 * MiB, upload_peak
