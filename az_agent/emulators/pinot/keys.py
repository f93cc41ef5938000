"""Typed keys of what the emulator's aiohttp application carries."""

from __future__ import annotations

from aiohttp import web

from az_agent.emulators.pinot.cluster import Cluster

CLUSTER = web.AppKey("pinot_cluster", Cluster)
