"""The coordinator's settings: one plain record, importable without the server (the
command line reads its defaults for its options)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from gpunet.archive import Limits


@dataclass
class Settings:
    database_url: str
    lease_timeout_s: float = 30.0
    policy: str = "default"
    max_upload_bytes: int = 64 * 1024 * 1024
    scheduler_interval_s: float = 1.0
    # the leader's passes run in a child process of their own (loops.pass_worker); None:
    # on PostgreSQL yes, on SQLite in a thread (one process owns the file)
    scheduler_process: bool | None = None
    max_starts_per_pass: int = 500  # the rest start in the next pass, at once
    reaper_interval_s: float = 1.0
    # heartbeat times and telemetry reach the store in batches this often; the leader's
    # reaper reads other replicas' heartbeats from there (docs/replicas.md)
    telemetry_flush_s: float = 1.0
    replica: str = ""  # this coordinator's name among replicas (default: host-pid)
    leader_check_s: float = 1.0  # how often a replica tries to lead, or proves it still does
    # market: the network's cut of each sale, credits held per attempt (in hours of its
    # price), and how often running attempts are settled (energy is priced per node site:
    # core.energy.gpu_kwh_price)
    network_fee: Decimal = Decimal("0.10")
    hold_hours: Decimal = Decimal("1")
    meter_interval_s: float = 300.0
    # fair share: an account's past GPU use counts half as much after this long
    fair_share_half_life_s: float = 24 * 3600.0
    burn_in: bool = False  # new GPUs wait for a passing burn-in benchmark before taking work
    auto_tiers: bool = False  # apply proposed tier moves without an operator
    tier_interval_s: float = 300.0
    # hostile tenants and lying providers: request bodies, output, archives, storage, queues
    max_body_bytes: int = 1024 * 1024  # any request but an archive upload
    auth_before_body_bytes: int = 64 * 1024  # larger bodies are read only once authenticated
    max_log_bytes: int = 8 * 1024 * 1024  # stored output per attempt; the rest is dropped
    archive_max_members: int = 10_000
    archive_max_bytes: int = 2 * 1024**3  # unpacked, in total and per member
    blob_quota_bytes: int = 10 * 1024**3  # archives each account may own
    max_queued_jobs: int = 10_000  # queued + assigned jobs per account
    blob_grace_s: float = 3600.0  # unreferenced archives are kept this long
    blob_gc_interval_s: float = 300.0
    # checkpoints (docs/checkpoints.md): where the store keeps objects (default: a
    # ``checkpoints`` folder under GPUNET_HOME), bytes of objects per account, files per
    # checkpoint, how long torn uploads, finished jobs' checkpoints and unused objects stay
    checkpoint_dir: str | None = None
    checkpoint_store: str | None = None  # s3://bucket/prefix instead of checkpoint_dir
    checkpoint_quota_bytes: int = 50 * 1024**3
    checkpoint_max_files: int = 10_000
    checkpoint_pending_s: float = 3600.0
    checkpoint_retention_s: float = 7 * 86400.0
    checkpoint_object_grace_s: float = 600.0

    def archive_limits(self) -> Limits:
        return Limits(
            max_members=self.archive_max_members,
            max_total_bytes=self.archive_max_bytes,
            max_member_bytes=self.archive_max_bytes,
        )
