"""All configuration, read from the environment in one place (prefix FTDEPLOY_, plus the openai
SDK's own OPENAI_API_KEY and OPENAI_BASE_URL and the XDG data directory).

`get_settings()` raises `SettingsInvalid` with one line per problem, each naming the environment
variable and never its value (pydantic's own message repeats every input, secrets included).
Secrets lose surrounding whitespace (a file-mounted secret ends with a newline); database URLs
are normalized (`registry.dburl`). `effective_settings()` is the configuration as a dict with
every secret masked, for an operator to look at.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as _SourceError

from registry import dburl
from registry.errors import SettingsInvalid

PREFIX = "FTDEPLOY_"
# Aliased fields keep their own names: the openai SDK's variables.
ALIASES = {"openai_api_key": "OPENAI_API_KEY", "openai_base_url": "OPENAI_BASE_URL"}
SECRET_FIELDS = ("database_url", "broker_url", "webhook_secret", "openai_api_key")


def default_data_dir() -> Path:
    """The per-user data directory (XDG Base Directory): $XDG_DATA_HOME/ftdeploy, by default
    ~/.local/share/ftdeploy, so every process of one user finds the same embedded database
    wherever it was started. A relative XDG_DATA_HOME is ignored, as the specification says."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "share"
    return root / "ftdeploy"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default_factory=default_data_dir)
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
    # How long the last known split is served while the database cannot be read (None: for as
    # long as the outage lasts).
    routing_max_stale_seconds: float | None = Field(default=None, gt=0)
    # Memory bounds of a serving process's routing memos, in bytes.
    routing_subject_memo_bytes: int = Field(default=64 << 20, ge=0)
    routing_name_memo_bytes: int = Field(default=4 << 20, ge=0)
    routing_snapshot_memo_bytes: int = Field(default=64 << 20, ge=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # Loopback by default: the metrics name tenants and are served without authentication.
    metrics_host: str = Field(default="127.0.0.1", min_length=1)
    # Width of an online-outcome counter bucket. A canary's window starts at the first bucket that
    # begins at or after its step's start, so up to one bucket of outcomes per step goes unused.
    outcome_bucket_seconds: int = Field(default=10, ge=1, le=3600)
    webhook_secret: SecretStr | None = None
    webhook_max_body_bytes: int = Field(default=256 * 1024, gt=0)
    # The receiver under slow or idle clients (worker.receiver_server): a request's headers
    # must arrive within this many seconds of the connection (or of the previous response)...
    webhook_header_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # ... and its body within this many seconds of its headers (else 408).
    webhook_body_timeout_seconds: float = Field(default=10.0, gt=0, le=3600)
    # Connections and requests at once before new requests get 503 (uvicorn limit_concurrency).
    webhook_max_connections: int = Field(default=1000, ge=1)
    webhook_keep_alive_seconds: float = Field(default=5.0, gt=0, le=3600)
    reconcile_seconds: float = Field(default=60.0, gt=0)
    # How old an accepted, never-enqueued event must be before the reconciler re-sends it: long
    # enough for the door that accepted it to have finished its own send.
    reconcile_grace_seconds: float = Field(default=30.0, ge=0)
    # A queued operation not started within this many seconds ends `expired` instead of
    # applying a decision made minutes (or an outage) ago; at most a day.
    operation_ttl_seconds: float = Field(default=300.0, gt=0, le=86400)
    log_json: bool = False
    # HTTP API: a verified key is trusted this long before its row is read again (so a revoked
    # key stops working within it); the change stream's heartbeat; the body limit.
    api_key_cache_seconds: float = Field(default=1.0, ge=0)
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    api_max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # The dashboard's session cookies are signed with this; unset, a random secret is generated
    # once and kept in the data directory (`session_secret`, readable by its owner only).
    session_secret: SecretStr | None = None
    session_max_age_seconds: int = Field(default=12 * 3600, gt=0)

    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "openai_api_key")
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_BASE_URL", "openai_base_url")
    )

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("database_url", "broker_url", "webhook_secret", mode="after")
    @classmethod
    def _strip_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        stripped = value.get_secret_value().strip()
        return SecretStr(stripped) if stripped else None

    @field_validator("database_url", mode="after")
    @classmethod
    def _normalize_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        return SecretStr(dburl.normalize(value.get_secret_value()))

    @field_validator("openai_api_key", mode="after")
    @classmethod
    def _clean_api_key(cls, value: SecretStr | None) -> SecretStr | None:
        # A key read from a file keeps its newline; sent as is, the HTTP library refuses the
        # header and quotes it, key included, in its error message.
        if value is None:
            return None
        key = value.get_secret_value().strip()
        if not key:
            return None
        if not key.isprintable() or any(ch.isspace() for ch in key):
            raise ValueError("contains spaces or control characters inside the key")
        return SecretStr(key)

    @field_validator("openai_base_url", mode="after")
    @classmethod
    def _strip_base_url(cls, value: str | None) -> str | None:
        return (value or "").strip() or None

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
                f"{PREFIX}VISIBILITY_TIMEOUT_SECONDS must exceed the longest task time limit "
                f"({PREFIX}TASK_TIME_LIMIT_SECONDS) and retry countdown "
                f"({PREFIX}JOB_POLL_MAX_SECONDS)"
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

    @property
    def openai_api_key_value(self) -> str | None:
        return self.openai_api_key.get_secret_value() if self.openai_api_key else None


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return ALIASES.get(field, PREFIX + field.upper())


def _field_of(loc: tuple[Any, ...]) -> str | None:
    if not loc:
        return None
    name = str(loc[0])
    if name in Settings.model_fields:
        return name
    return next((field for field, alias in ALIASES.items() if alias == name), None)


def _problem(error: Any) -> str:
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    value = error.get("input")
    # Belt and braces: no message of pydantic's should quote the input, but never let one do it.
    if isinstance(value, str) and len(value) >= 3 and value in message:
        message = message.replace(value, "***")
    return message.splitlines()[0] if message else "invalid"


def settings_problems(error: ValidationError) -> list[tuple[str | None, str]]:
    """(environment variable or None for a check across settings, problem) per error."""
    problems = []
    for item in error.errors(include_url=False, include_input=True):
        field = _field_of(tuple(item.get("loc", ())))
        problems.append((env_name(field) if field else None, _problem(item)))
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and `overrides`); raises SettingsInvalid, one line per
    problem naming the environment variable, never its value."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise SettingsInvalid(settings_problems(error)) from None
    except _SourceError as error:
        # A value the environment source could not decode; its message names the field only.
        raise SettingsInvalid([(None, str(error).splitlines()[0])]) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()


def effective_settings(settings: Settings | None = None) -> dict[str, Any]:
    """Every setting in force, by environment variable, with secrets masked: URLs keep all but
    their password, keys and secrets show only whether they are set. Plain JSON values."""
    settings = settings or get_settings()
    result: dict[str, Any] = {}
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if field in ("database_url", "broker_url"):
            url = (
                settings.database_url_value
                if field == "database_url"
                else settings.broker_url_value
            )
            value = dburl.masked(url)
        elif field in SECRET_FIELDS:
            value = None if value is None else "***"
        elif isinstance(value, Path):
            value = str(value.resolve())
        result[env_name(field)] = value
    return result
