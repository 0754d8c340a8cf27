"""`ftdeploy notify` in-process, on PostgreSQL and on the embedded SQLite file (whose key is
generated in the data directory): add prints the secret once, list never shows it, test sends a
signed request now, show, disable and enable, replay (nothing to send here), remove removes; one
name in two tenants and globally, each reached with its owner (`--tenant`, `--global`)."""

from __future__ import annotations

import json

import pytest

from tests.worker.cli_support import ok_json, run
from tests.worker.notify_receiver import receiver


def test_add_test_list_remove(
    cli_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not cli_db.startswith("sqlite"):
        monkeypatch.setenv("FTDEPLOY_NOTIFY_ENCRYPTION_KEY", "cli-test-key")
    with receiver() as server:
        code, out, err = run(capsys, "notify", "add", "hook", "--url", server.url)
        assert code == 0 and err == ""
        secret = out.rsplit(" ", 1)[-1].strip()
        assert secret.startswith("whsec_") and "shown once" in out
        server.secret = secret

        result = ok_json(capsys, "notify", "test", "hook")
        assert result["status_code"] == 200 and result["outcome"] == "delivered"
        [request] = server.requests
        assert request.verified and request.type == "notification.test"
        assert request.webhook_id == result["webhook_id"]

        server.answer(500)
        code, out, _ = run(capsys, "notify", "test", "hook")
        assert code == 1 and "HTTP 500" in out

    listed = ok_json(capsys, "notify", "list")
    assert isinstance(listed, list) and [e["name"] for e in listed] == ["hook"]
    code, text, _ = run(capsys, "notify", "list")
    for shown in (json.dumps(listed), text):
        assert secret not in shown and "/hooks/ftdeploy" not in shown
    assert ok_json(capsys, "notify", "show", "hook") == listed[0]
    disabled = ok_json(capsys, "notify", "disable", "hook", "--reason", "later", "--actor", "ops")
    assert disabled["enabled"] is False and disabled["disabled_reason"] == "disabled by ops: later"
    assert ok_json(capsys, "notify", "enable", "hook") == {"name": "hook", "enabled": True}
    nothing = {"name": "hook", "requeued": 0, "missed": 0, "webhook_ids": []}
    assert ok_json(capsys, "notify", "replay", "hook", "--since", "1d") == nothing
    assert ok_json(capsys, "notify", "deliveries", "hook") == []
    assert ok_json(capsys, "notify", "remove", "hook") == {"name": "hook", "removed": True}
    assert ok_json(capsys, "notify", "list") == []


def test_a_database_server_needs_an_encryption_key(
    cli_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if cli_db.startswith("sqlite"):
        pytest.skip("the embedded database generates its key")
    code, _, err = run(capsys, "notify", "add", "hook", "--url", "https://example.com/h")
    assert code == 2 and "FTDEPLOY_NOTIFY_ENCRYPTION_KEY" in err and err.count("\n") == 1
    assert ok_json(capsys, "notify", "list") == []


def test_one_name_for_two_tenants_and_globally_needs_the_owner(
    cli_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    if not cli_db.startswith("sqlite"):
        monkeypatch.setenv("FTDEPLOY_NOTIFY_ENCRYPTION_KEY", "cli-test-key")
    for slug in ("acme", "beta"):
        assert run(capsys, "tenant", "add", slug)[0] == 0
    url = "https://example.com/hook"
    for owner in (["--tenant", "acme"], ["--tenant", "beta"], []):
        code, _, err = run(capsys, "notify", "add", "slack", "--url", url, *owner)
        assert (code, err) == (0, "")
    code, _, err = run(capsys, "notify", "add", "slack", "--url", url, "--tenant", "acme")
    assert code == 1 and "already exists: 'slack'" in err
    assert [(e["name"], e["tenant"]) for e in ok_json(capsys, "notify", "list")].count(
        ("slack", "acme")
    ) == 1

    before = ok_json(capsys, "notify", "list")
    for command in (["show"], ["deliveries"], ["enable"], ["disable"], ["replay"], ["remove"]):
        code, out, err = run(capsys, "notify", *command, "slack")
        assert code == 1 and out == "", (command, out)
        assert "held by more than one owner (the global endpoints, tenant 'acme', tenant " in err
        assert "--tenant SLUG" in err and "--global" in err
    assert ok_json(capsys, "notify", "list") == before  # nothing changed

    assert ok_json(capsys, "notify", "show", "slack", "--tenant", "beta")["tenant"] == "beta"
    assert ok_json(capsys, "notify", "show", "slack", "--global")["tenant"] is None
    disabled = ok_json(capsys, "notify", "disable", "slack", "--tenant", "acme", "--actor", "ops")
    assert disabled["tenant"] == "acme" and disabled["enabled"] is False
    assert ok_json(capsys, "notify", "remove", "slack", "--global") == {
        "name": "slack",
        "removed": True,
    }
    code, _, err = run(capsys, "notify", "show", "slack", "--tenant", "acme", "--global")
    assert code == 2 and "not allowed with argument" in err
    code, _, err = run(capsys, "notify", "show", "slack", "--tenant", "nobody")
    assert code == 3 and "tenant not found: 'nobody'" in err
    listed = {(e["name"], e["tenant"]): e["enabled"] for e in ok_json(capsys, "notify", "list")}
    assert listed == {("slack", "acme"): False, ("slack", "beta"): True}
