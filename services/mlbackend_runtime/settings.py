"""Settings shared by every server, from flags and ``MLBACKEND_*`` environment variables.

Built once in the CLI or a test, passed down to ``app.py``; nothing below reads the
environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeAlias

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Port = int
TIMEOUT_DEPENDENCIES = ("registry", "features", "serving", "monitoring")


# A service's gRPC front: a thread-pool grpc.server or grpc.aio.
Front: TypeAlias = Literal["threads", "asyncio"]


class ServerSettings(BaseSettings):
    """How one service process listens, authenticates and reaches its dependencies."""

    model_config = SettingsConfigDict(env_prefix="MLBACKEND_", extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address to bind gRPC and metrics to.")
    port: Port | None = Field(None, ge=0, le=65535, description="gRPC port; 0 = ephemeral.")
    metrics_port: Port | None = Field(None, ge=0, le=65535, description="HTTP /metrics port.")
    health_port: Port | None = Field(
        None, ge=0, le=65535, description="Extra plaintext port serving only grpc.health.v1."
    )
    data_dir: Path = Field(Path("data"), description="Where embedded stores keep their files.")
    token_file: Path | None = Field(None, description="Bearer tokens with roles; unset = no auth.")
    tls_cert: Path | None = Field(None, description="PEM server certificate (chain).")
    tls_key: Path | None = Field(None, description="PEM private key of tls_cert.")
    tls_client_ca: Path | None = Field(None, description="PEM CA bundle: require client certs.")
    insecure: bool = Field(False, description="Allow a non-loopback bind without TLS and auth.")
    metrics_open: bool = Field(
        False,
        description="With tokens on, let /metrics be read without one (for a scraper that "
        "cannot send a bearer token); otherwise a scrape needs a token of any role.",
    )
    grace_seconds: float = Field(20.0, gt=0, description="Drain time for in-flight calls.")
    max_concurrent_rpcs: int = Field(
        1024,
        gt=0,
        description="Calls in progress (streams included, health not) beyond which a new "
        "call is refused with RESOURCE_EXHAUSTED; serving's and the feature store's "
        "thread fronts add their stream slots.",
    )
    max_message_bytes: int | None = Field(
        None, gt=1024, description="Largest message accepted or sent; larger → RESOURCE_EXHAUSTED."
    )
    database_url: str | None = Field(
        None, description="PostgreSQL URL (postgresql://…) for metadata; unset: SQLite in data_dir"
    )
    allow_pickle: bool = Field(
        False, description="Accept pickle/joblib model artifacts (they can run arbitrary code)."
    )
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Outgoing calls to other services (who needs which is up to each service).
    registry: str | None = Field(None, description="Registry target (host:port, list, dns:///).")
    features: str | None = Field(None, description="Feature store target.")
    serving: str | None = Field(None, description="Serving target.")
    monitoring: str | None = Field(None, description="Monitoring target.")
    token: SecretStr | None = Field(None, description="Bearer token for outgoing calls.")
    tls_ca: Path | None = Field(None, description="PEM CA bundle to verify dependencies' TLS.")

    # Feature store storage.
    online_store: Literal["sqlite", "redis"] = Field(
        "sqlite", description="Online feature store engine (redis needs redis_url)."
    )
    redis_url: str | None = Field(None, description="Redis URL (redis://host:port/db).")
    redis_prefix: str = Field("mlbackend:features", description="Prefix of the store's Redis keys.")
    online_read_cache: int = Field(
        100_000,
        ge=0,
        description="Online values the feature store keeps in process, at most this many "
        "entities per store: with SQLite dropped on this process's writes (the only "
        "writer), with Redis when Redis announces a change (client-side caching) or after "
        "1 s; 0 = off.",
    )
    maintenance_seconds: float = Field(
        30.0, gt=0, description="Interval of TTL cleanup, retention and online catch-up."
    )

    # Serving, simple mode: models from a local directory instead of the registry.
    model_dir: Path | None = Field(
        None, description="Serve DIR/<model>/<version>/{model.json,model.skops} (no registry)."
    )
    # Serving, registry mode (registry set, model_dir not): which versions to follow.
    serving_models: str | None = Field(
        None,
        description="Versions to serve, e.g. 'fraud@production,other@latest:2,x@3'; "
        "unset: every version an alias points at, of every model.",
    )
    serving_front: Front = Field(
        "threads",
        description="Serving's gRPC front: a thread-pool server (default) or grpc.aio.",
    )
    features_front: Front = Field(
        "threads",
        description="The feature store's gRPC front: a thread-pool server (default) or grpc.aio.",
    )
    # Gateway: the JSON/HTTP front beside its gRPC port.
    http_port: Port | None = Field(
        8080, ge=0, le=65535, description="Gateway JSON/HTTP port; 0 = ephemeral, unset = off."
    )
    timeouts: str | None = Field(
        None,
        description="Gateway: per-dependency call timeouts in seconds, e.g. "
        "'features=0.5,serving=1' (registry, features, serving, monitoring); each is "
        "also capped by the caller's deadline.",
    )
    max_in_flight: int | None = Field(
        None, gt=0, description="Gateway: predictions in progress before RESOURCE_EXHAUSTED."
    )
    monitoring_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Monitoring: how much lower the CPU priority of its ingest thread is "
        "(record decoding and writes; Linux), so on a host shared with the online path it "
        "takes the CPU left over first; 0 = the process's own.",
    )
    coalesce_rows: int | None = Field(
        None,
        ge=1,
        description="Gateway: most rows in one coalesced feature read or prediction "
        "(concurrent requests for one model version share a call); 1 = off, default 64.",
    )
    stream_slots: int = Field(
        32,
        ge=0,
        le=1024,
        description="Feature store and serving (thread-pool fronts): streams kept open at "
        "once per stream method (StreamOnlineFeatures, StreamPredict). Each holds a front "
        "thread, on top of the 32 the other calls share; past the limit a new stream is "
        "refused (RESOURCE_EXHAUSTED, reason STREAM_LIMIT) and its caller makes unary "
        "calls. 32 = eight gateways at their default 4 streams.",
    )
    upstream_streams: int | None = Field(
        None,
        ge=0,
        description="Gateway: long-lived streams kept open to the feature store and to "
        "serving each (StreamOnlineFeatures, StreamPredict), which carry reads and "
        "predictions at a fraction of a unary call's cost; 0 = unary calls only, "
        "default 4.",
    )

    @model_validator(mode="after")
    def _tls_pairs(self) -> ServerSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        return self

    @model_validator(mode="after")
    def _redis_url(self) -> ServerSettings:
        if self.online_store == "redis" and not self.redis_url:
            raise ValueError("online_store redis needs redis_url")
        return self

    @model_validator(mode="after")
    def _timeouts(self) -> ServerSettings:
        self.dependency_timeouts()  # raises on a malformed list
        return self

    def dependency_timeouts(self) -> dict[str, float]:
        """``timeouts`` parsed: dependency name → seconds (only those given)."""
        parsed: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in (self.timeouts or "").split(","))):
            name, sep, raw = item.partition("=")
            name = name.strip()
            if not sep or name not in TIMEOUT_DEPENDENCIES:
                raise ValueError(
                    f"timeouts: {item!r} is not NAME=SECONDS with NAME one of "
                    f"{', '.join(TIMEOUT_DEPENDENCIES)}"
                )
            try:
                seconds = float(raw)
            except ValueError:
                seconds = float("nan")
            if not seconds > 0 or seconds == float("inf"):
                raise ValueError(f"timeouts: {name} must be a positive number of seconds")
            parsed[name] = seconds
        return parsed

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None
