"""`ftdeploy notify` in-process, on PostgreSQL and on the embedded SQLite file (whose key is
generated in the data directory): add prints the secret once, list never shows it, test sends a
signed request now, show, disable and enable, replay (nothing to send here), remove removes."""

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
