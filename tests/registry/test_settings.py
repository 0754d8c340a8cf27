"""Settings: errors that name the variable and never a value, database URLs as users write them,
the per-user data directory, file-mounted secrets, and the effective settings with secrets masked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from registry.errors import SettingsInvalid
from registry.settings import Settings, effective_settings, get_settings, load_settings
from tests import services

WEBHOOK_SECRET = "whsec_c2VjcmV0LXZhbHVlLWZvci10ZXN0cw=="
PASSWORD = "hunter2-p@ss/w:rd"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    import os

    for key in list(os.environ):
        if key.startswith(("FTDEPLOY_", "OPENAI_")):
            monkeypatch.delenv(key)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_settings_error_never_echoes_values(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FTDEPLOY_WEBHOOK_SECRET", WEBHOOK_SECRET)
    clean_env.setenv("FTDEPLOY_DATABASE_URL", f"postgresql://app:{PASSWORD}@db.internal/app")
    clean_env.setenv("OPENAI_API_KEY", "sk-proj-abcdefghijklmnop")
    clean_env.setenv("FTDEPLOY_SWEEP_SECONDS", "-3")
    clean_env.setenv("FTDEPLOY_METRICS_PORT", "hunter2-port")
    clean_env.setenv("FTDEPLOY_LOG_JSON", "maybe")
    with pytest.raises(SettingsInvalid) as caught:
        get_settings()
    message = str(caught.value)
    lines = message.splitlines()
    assert len(lines) == 3, message
    assert lines[0].startswith("invalid setting FTDEPLOY_SWEEP_SECONDS: ")
    assert lines[1].startswith("invalid setting FTDEPLOY_METRICS_PORT: ")
    assert lines[2].startswith("invalid setting FTDEPLOY_LOG_JSON: ")
    for secret in ("whsec_", "hunter2", "sk-proj", "db.internal", "maybe", "-3", "input_value"):
        assert secret not in message
    # Not chained to pydantic's error, whose text holds every input value.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_settings_error_names_the_check_across_settings(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FTDEPLOY_VISIBILITY_TIMEOUT_SECONDS", "10")
    with pytest.raises(SettingsInvalid, match="FTDEPLOY_VISIBILITY_TIMEOUT_SECONDS") as caught:
        load_settings()
    assert "10" not in str(caught.value)


def test_settings_error_for_an_unreadable_database_url_never_echoes_it(
    clean_env: pytest.MonkeyPatch,
) -> None:
    for url in (f"mysql://app:{PASSWORD}@h/db", f"postgres://app:{PASSWORD}@h:port/db", PASSWORD):
        clean_env.setenv("FTDEPLOY_DATABASE_URL", url)
        with pytest.raises(SettingsInvalid) as caught:
            load_settings()
        assert str(caught.value).startswith("invalid setting FTDEPLOY_DATABASE_URL: ")
        assert "hunter2" not in str(caught.value) and "p@ss" not in str(caught.value)


@pytest.mark.parametrize(
    "written",
    [
        f"postgres://app:{PASSWORD}@db.example:5433/app",
        f"postgresql://app:{PASSWORD}@db.example:5433/app",
        "postgresql://app:hunter2-p%40ss%2Fw%3Ard@db.example:5433/app",
        f"postgresql+psycopg://app:{PASSWORD}@db.example:5433/app",
    ],
)
def test_database_url_with_unencoded_at_and_postgres_scheme(written: str) -> None:
    url = make_url(Settings(database_url=written).database_url_value)
    assert url.drivername == "postgresql+psycopg"
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "app",
        PASSWORD,
        "db.example",
        5433,
        "app",
    )


def test_database_url_as_users_write_it_connects(postgres: services.Service) -> None:
    # The test server trusts every password: a URL that parses right connects, one that took
    # the password's tail for the host fails to resolve it.
    real = make_url(postgres.url)
    written = f"postgres://{real.username}:{PASSWORD}@{real.host}:{real.port}/{real.database}"
    engine = create_engine(Settings(database_url=written).database_url_value)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_data_dir_defaults_to_the_users_data_directory(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    clean_env.chdir(tmp_path)
    assert Settings().data_dir == tmp_path / "xdg" / "ftdeploy"
    assert Settings().database_url_value == f"sqlite:///{tmp_path / 'xdg' / 'ftdeploy'}/ftdeploy.db"
    # Wherever the process starts, the same directory.
    (tmp_path / "elsewhere").mkdir()
    clean_env.chdir(tmp_path / "elsewhere")
    assert Settings().data_dir == tmp_path / "xdg" / "ftdeploy"
    # Without XDG_DATA_HOME (or with a relative one, which the specification says to ignore).
    clean_env.setenv("HOME", str(tmp_path / "home"))
    for value in (None, "relative/dir"):
        if value is None:
            clean_env.delenv("XDG_DATA_HOME")
        else:
            clean_env.setenv("XDG_DATA_HOME", value)
        assert Settings().data_dir == tmp_path / "home" / ".local" / "share" / "ftdeploy"
    # FTDEPLOY_DATA_DIR still wins, with ~ expanded.
    clean_env.setenv("FTDEPLOY_DATA_DIR", "~/ftd")
    assert Settings().data_dir == tmp_path / "home" / "ftd"


def test_openai_api_key_from_a_file_loses_its_newline(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("OPENAI_API_KEY", "sk-proj-abcdefghijkl\n")
    clean_env.setenv("FTDEPLOY_WEBHOOK_SECRET", WEBHOOK_SECRET + "\r\n")
    settings = load_settings()
    assert settings.openai_api_key_value == "sk-proj-abcdefghijkl"
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.get_secret_value() == WEBHOOK_SECRET
    # A key that is broken inside is refused at start, without repeating it.
    clean_env.setenv("OPENAI_API_KEY", "sk-proj-abc\ndefghijkl")
    with pytest.raises(SettingsInvalid, match=r"^invalid setting OPENAI_API_KEY: ") as caught:
        load_settings()
    assert "sk-proj" not in str(caught.value)


def test_effective_settings_masks_every_secret(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("FTDEPLOY_WEBHOOK_SECRET", WEBHOOK_SECRET)
    clean_env.setenv("FTDEPLOY_DATABASE_URL", f"postgres://app:{PASSWORD}@db.example/app")
    clean_env.setenv("FTDEPLOY_BROKER_URL", "redis://:brokerpass99@redis.example:6379/0")
    clean_env.setenv("OPENAI_API_KEY", "sk-proj-abcdefghijkl")
    clean_env.setenv("FTDEPLOY_SWEEP_SECONDS", "7")
    shown = effective_settings(load_settings())
    dumped = json.dumps(shown)  # plain JSON values throughout
    for secret in ("hunter2", "p@ss", "brokerpass99", "abcdefghijkl", "c2VjcmV0"):
        assert secret not in dumped
    assert shown["FTDEPLOY_DATABASE_URL"] == "postgresql+psycopg://app:***@db.example/app"
    assert shown["FTDEPLOY_BROKER_URL"] == "redis://:***@redis.example:6379/0"
    assert shown["FTDEPLOY_WEBHOOK_SECRET"] == "***"
    assert shown["OPENAI_API_KEY"] == "***"
    assert shown["FTDEPLOY_SWEEP_SECONDS"] == 7.0
    assert shown["FTDEPLOY_METRICS_HOST"] == "127.0.0.1"
    assert set(shown) >= {"FTDEPLOY_DATA_DIR", "OPENAI_BASE_URL", "FTDEPLOY_METRICS_PORT"}
