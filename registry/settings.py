"""All configuration, read from the environment in one place (prefix FTDEPLOY_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FTDEPLOY_", extra="ignore")

    data_dir: Path = Path("./.ftdeploy")
    # Empty means the embedded default (a SQLite file / a filesystem broker in data_dir).
    database_url: SecretStr | None = None
    broker_url: SecretStr | None = None

    sweep_seconds: float = Field(default=30.0, gt=0)
    job_poll_seconds: float = Field(default=15.0, gt=0)
    job_poll_max_seconds: float = Field(default=600.0, gt=0)
    job_deadline_seconds: float = Field(default=6 * 3600.0, gt=0)
    task_time_limit_seconds: int = Field(default=300, gt=0)
    visibility_timeout_seconds: int = Field(default=3600, gt=0)
    max_retries: int = Field(default=50, ge=0)
    openai_timeout_seconds: float = Field(default=30.0, gt=0)
    routing_staleness_seconds: float = Field(default=1.0, ge=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Width of an online-outcome counter bucket. A canary's window starts at the first bucket that
    # begins at or after its step's start, so up to one bucket of outcomes per step goes unused.
    outcome_bucket_seconds: int = Field(default=10, ge=1, le=3600)
    webhook_secret: SecretStr | None = None
    webhook_max_body_bytes: int = Field(default=256 * 1024, gt=0)
    reconcile_seconds: float = Field(default=60.0, gt=0)
    # How old an accepted, never-enqueued event must be before the reconciler re-sends it: long
    # enough for the door that accepted it to have finished its own send.
    reconcile_grace_seconds: float = Field(default=30.0, ge=0)
    log_json: bool = False
    # HTTP API: a verified key is trusted this long before its row is read again (so a revoked
    # key stops working within it); the change stream's poll and heartbeat; the body limit.
    api_key_cache_seconds: float = Field(default=1.0, ge=0)
    stream_poll_seconds: float = Field(default=1.0, gt=0)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # The dashboard's session cookies are signed with this; unset, a random secret is generated
    # once and kept in the data directory (`session_secret`, readable by its owner only).
    session_secret: SecretStr | None = None
    session_max_age_seconds: int = Field(default=12 * 3600, gt=0)

    @model_validator(mode="after")
    def _visibility_outlasts_every_delay(self) -> Settings:
        # Redis redelivers an unacked message after the visibility timeout. If a task may run, or
        # wait for its countdown, longer than that, a second worker starts the same work.
        longest = max(self.task_time_limit_seconds, self.job_poll_max_seconds)
        if self.visibility_timeout_seconds <= longest:
            raise ValueError(
                f"FTDEPLOY_VISIBILITY_TIMEOUT_SECONDS ({self.visibility_timeout_seconds}) must "
                f"exceed the longest task time limit or retry countdown ({longest:g})"
            )
        return self

    @property
    def database_url_value(self) -> str:
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'ftdeploy.db').resolve()}"

    @property
    def broker_url_value(self) -> str:
        if self.broker_url is not None and self.broker_url.get_secret_value():
            return self.broker_url.get_secret_value()
        return "filesystem://"

    @property
    def is_embedded_database(self) -> bool:
        return self.database_url_value.startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
