"""Settings of the annotation server: `prefloop annotate --help` lists them, the workspace's
config.yaml `annotate:` section sets them, flags override. There are no secrets here and no
default accounts: people get tokens from `prefloop users add`."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

from prefloop.config import option
from prefloop.errors import PrefloopError

ENV_VAR = "PREFLOOP_ANNOTATE_SETTINGS"  # how uvicorn worker processes receive the settings


@dataclass(frozen=True)
class AppSettings:
    db: str | None = option(None, "database URL (default: the workspace's SQLite store)")
    host: str = option("127.0.0.1", "interface to listen on (0.0.0.0 exposes it on the network)")
    port: int = option(8300, "TCP port")
    workers: int = option(1, "uvicorn worker processes (more use more cores)")
    overlap: int | None = option(
        None, "labels wanted per regular comparison (k); sets required_labels at start"
    )
    gold_rate: float = option(0.1, "probability that a task is a gold (honeypot) comparison")
    lease_s: float = option(300.0, "seconds a shown comparison is held for its annotator")
    undo_window_s: float = option(900.0, "how old a label may be and still be undone")
    rate_limit: float = option(20.0, "requests per second allowed per token (0: no limit)")
    rate_burst: int = option(60, "requests a token may burst above the rate")
    max_body_bytes: int = option(65536, "largest accepted request body")
    auth_cache_s: float = option(
        5.0, "seconds a token lookup is cached (a disabled account stops within this)"
    )

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.gold_rate <= 1.0, "gold_rate", "must be between 0 and 1"),
            (self.lease_s > 0, "lease_s", "must be > 0"),
            (self.rate_limit >= 0, "rate_limit", "must be >= 0"),
            (self.rate_burst >= 1, "rate_burst", "must be >= 1"),
            (self.max_body_bytes >= 1024, "max_body_bytes", "must be >= 1024"),
            (self.workers >= 1, "workers", "must be >= 1"),
            (0 < self.port < 65536, "port", "must be 1-65535"),
            (self.overlap is None or self.overlap >= 1, "overlap", "must be >= 1"),
        ]
        for ok, field, msg in checks:
            if not ok:
                raise PrefloopError(f"{field} {msg}", field=field)

    def to_env(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> AppSettings:
        raw = os.environ.get(ENV_VAR)
        if not raw:
            raise PrefloopError(f"{ENV_VAR} is not set (start the server with `prefloop annotate`)")
        return cls(**json.loads(raw))
