"""Every Prometheus metric of ftrain, defined in one place (names fixed by DESIGN.md section 3).

Each process (coordinator, agent) builds one `Metrics` on its own registry and serves it with
`serve(port)`. Trainers do not serve: they report to the coordinator and their agent.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_STALL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)
_RECOVERY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_STALENESS_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128)


class Metrics:
    """The metric objects of one process, registered on `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.world_size = Gauge("ftrain_world_size", "Number of trainer ranks in the current generation", registry=r)
        self.generation = Gauge("ftrain_generation", "Current generation number", registry=r)
        self.step = Gauge("ftrain_step", "Last committed step", registry=r)
        self.step_duration = Histogram(
            "ftrain_step_duration_seconds", "Wall time of one training step", buckets=_STEP_BUCKETS, registry=r
        )
        self.snapshot_stall = Histogram(
            "ftrain_snapshot_stall_seconds", "Time the training loop waited for a snapshot capture",
            buckets=_STALL_BUCKETS, registry=r,
        )
        self.snapshot_duration = Histogram(
            "ftrain_snapshot_duration_seconds", "Time from capture to committed snapshot",
            buckets=_STEP_BUCKETS, registry=r,
        )
        self.snapshot_bytes = Counter("ftrain_snapshot_bytes", "Bytes captured into snapshots", registry=r)
        self.erasure_encode_bytes = Counter(
            "ftrain_erasure_encode_bytes", "Bytes run through the erasure encoder", registry=r
        )
        self.failures = Counter("ftrain_failures", "Failures detected, by kind", ["kind"], registry=r)
        self.recoveries = Counter("ftrain_recoveries", "Recoveries completed (new generation formed after a failure)", registry=r)
        self.recovery_duration = Histogram(
            "ftrain_recovery_duration_seconds", "Time from failure detection to the next committed step",
            buckets=_RECOVERY_BUCKETS, registry=r,
        )
        self.lost_steps = Counter("ftrain_lost_steps", "Training steps whose work was redone after a failure", registry=r)
        self.stragglers = Counter("ftrain_stragglers", "Straggler flags raised", registry=r)
        self.straggler_score = Gauge(
            "ftrain_straggler_score", "Latest slowdown of a rank relative to the median rank", ["rank"], registry=r
        )
        self.update_staleness = Histogram(
            "ftrain_update_staleness", "Staleness (versions behind) of applied async updates",
            buckets=_STALENESS_BUCKETS, registry=r,
        )
        self.heartbeat_age = Gauge(
            "ftrain_heartbeat_age_seconds", "Seconds since the node's agent last heartbeated", ["node"], registry=r
        )
        self.shard_store_bytes = Gauge(
            "ftrain_shard_store_bytes", "Bytes of peers' snapshot shards held in this agent's memory", registry=r
        )
        self.trainer_restarts = Counter("ftrain_trainer_restarts", "Trainer processes restarted by this agent", registry=r)

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Starts the /metrics HTTP endpoint; returns the bound port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_address[1])
