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

    # Notifications (registry.notify). Seconds before each retry of a failed delivery (the
    # Standard Webhooks schedule), jittered; after the last one the delivery is given up.
    notify_retry_schedule_seconds: str = "5,300,1800,7200,18000,36000,50400,72000,86400"
    notify_timeout_seconds: float = Field(default=10.0, gt=0)
    # An endpoint whose every attempt failed for this long is disabled (and that is reported).
    notify_disable_after_seconds: float = Field(default=5 * 86400.0, gt=0)
    # A canary holding past this share of its progress deadline is notified (once per step).
    notify_hold_share: float = Field(default=0.5, gt=0, le=1)
    # Encrypts endpoint URLs and signing secrets at rest. Required with a database server; the
    # embedded default keeps a generated key in the data directory.
    notify_encryption_key: SecretStr | None = None
    # Base of links in notifications: {public_url}/tenants/{slug}.
    public_url: str | None = None

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

    @model_validator(mode="after")
    def _retry_schedule_parses(self) -> Settings:
        _ = self.notify_retry_schedule
        return self

    @property
    def notify_retry_schedule(self) -> tuple[float, ...]:
        """FTDEPLOY_NOTIFY_RETRY_SCHEDULE_SECONDS as numbers: "5,300" -> (5.0, 300.0)."""
        text = self.notify_retry_schedule_seconds
        try:
            delays = tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError:
            delays = ()
        if not delays or any(not 0 <= delay < 10 * 86400 for delay in delays):
            raise ValueError(
                f"FTDEPLOY_NOTIFY_RETRY_SCHEDULE_SECONDS ({text!r}) must be comma-separated "
                "seconds, each in 0..864000"
            )
        return delays

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
