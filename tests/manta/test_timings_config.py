"""The server's background timings (health cache, GC, scrub, repair, heartbeat, lifecycle) reach the
store, its nodes and its daemons from ServerConfig (MANTA_*_S in `manta serve`)."""

from __future__ import annotations

from pathlib import Path

from manta.server.config import TIMINGS, ServerConfig
from manta.server.frontdoor import build_app, store_config
from storage import OrphanCollector, Repairer
from storage.daemons import BackgroundScrubber
from storage.lifecycle import LifecycleDaemon

SHORT = {"health_ttl_s": 0.2, "gc_interval_s": 0.3, "scrub_interval_s": 0.4, "repair_interval_s": 0.5,
         "heartbeat_interval_s": 0.6, "lifecycle_interval_s": 0.7}


def test_every_timing_reaches_the_store_config(tmp_path: Path) -> None:
    assert set(SHORT) == set(TIMINGS)
    config = store_config(ServerConfig(data_dir=str(tmp_path), **SHORT))  # type: ignore[arg-type]
    assert {name: getattr(config, name) for name in SHORT} == SHORT


def test_timings_reach_the_nodes_and_daemons(tmp_path: Path) -> None:
    _, store, _ = build_app(ServerConfig(data_dir=str(tmp_path / "d"), nodes=2, **SHORT),  # type: ignore[arg-type]
                            jobs=False)
    try:
        assert [node.health_ttl_s for node in store.local_nodes()] == [0.2, 0.2]
        assert OrphanCollector(store).interval_s == 0.3
        assert BackgroundScrubber(store).interval_s == 0.4
        assert Repairer(store).interval_s == 0.5
        assert LifecycleDaemon(store).interval_s == 0.7
    finally:
        store.close()


def test_defaults_are_unchanged() -> None:
    config = ServerConfig()
    assert (config.health_ttl_s, config.gc_interval_s, config.scrub_interval_s, config.repair_interval_s,
            config.heartbeat_interval_s, config.lifecycle_interval_s) == (1.0, 600.0, 24 * 3600.0, 5.0, 1.0, 3600.0)
