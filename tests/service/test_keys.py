"""API keys: ``mpq keys list`` / ``revoke`` / ``create --expires-in``; revoked and expired keys get 401."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import update

from service.auth.service import KEY_CACHE_SECONDS, create_key, key_cache, parse_duration, revoke_key
from service.cli import main
from service.db import utcnow
from service.errors import NotFound, UnprocessableEntity
from service.models import APIKey

from .conftest import error_of


@pytest.fixture
def cli_env(monkeypatch, settings):
    monkeypatch.setenv("MPQ_DATABASE_URL", settings.database_url)


def test_revoked_key_gets_401(client, cli_env, capsys) -> None:
    assert main(["keys", "create", "--tenant", "revoker", "--name", "ci"]) == 0
    key = capsys.readouterr().out.strip()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200  # now cached in this process
    assert main(["keys", "list", "--tenant", "revoker", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(row["prefix"], row["state"], row["name"]) for row in listed] == [(key[:12], "active", "ci")]
    assert key not in json.dumps(listed)  # the clear key is never shown again
    assert main(["keys", "revoke", key[:12]]) == 0
    assert "revoked" in capsys.readouterr().out
    response = client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert "revoked" in error_of(response)["message"]
    assert main(["keys", "list", "--tenant", "revoker", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "revoked"
    assert KEY_CACHE_SECONDS == 10.0  # the documented bound for other API processes


def test_expiring_key_works_until_its_expiry(client, session, cli_env, capsys) -> None:
    assert main(["keys", "create", "--tenant", "expiring", "--expires-in", "30d"]) == 0
    out = capsys.readouterr()
    key = out.out.strip()
    assert "expires" in out.err
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/jobs", headers=headers).status_code == 200
    row = session.query(APIKey).filter(APIKey.prefix == key[:12]).one()
    assert abs((row.expires_at - utcnow()).total_seconds() - 30 * 86400) < 60
    # travel past the expiry: the cached entry must not outlive it either
    session.execute(
        update(APIKey).where(APIKey.id == row.id).values(expires_at=utcnow() - dt.timedelta(seconds=1))
    )
    session.commit()
    key_cache.entries = {
        h: (t, tenant, utcnow() - dt.timedelta(seconds=1)) for h, (t, tenant, _) in key_cache.entries.items()
    }
    response = client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert "expired" in error_of(response)["message"]
    key_cache.clear()
    assert client.get("/v1/jobs", headers=headers).status_code == 401
    assert main(["keys", "list", "--tenant", "expiring", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["state"] == "expired"


def test_durations_and_revoke_errors(session) -> None:
    assert parse_duration("30d") == dt.timedelta(days=30)
    assert parse_duration("12h") == dt.timedelta(hours=12)
    assert parse_duration("2w") == dt.timedelta(weeks=2)
    assert parse_duration("90m") == dt.timedelta(minutes=90)
    for bad in ("", "30", "0d", "-1d", "3y", "d30"):
        with pytest.raises(UnprocessableEntity, match="unit"):
            parse_duration(bad)
    with pytest.raises(NotFound):
        revoke_key(session, "mpq_nothing-like-this")
    a = create_key(session, "twins")
    revoke_key(session, str(session.query(APIKey).filter(APIKey.prefix == a.prefix).one().id))
    with pytest.raises(NotFound):
        revoke_key(session, "abc")  # too short to identify a key


def test_cli_reports_bad_input(cli_env, capsys) -> None:
    assert main(["keys", "create", "--tenant", "x", "--expires-in", "soon"]) == 2
    assert "invalid duration" in capsys.readouterr().err
    assert main(["keys", "revoke", "mpq_doesnotexist"]) == 2
    assert "no API key" in capsys.readouterr().err
