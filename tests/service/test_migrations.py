"""Alembic: upgrade head on empty SQLite and PostgreSQL, models in sync with migrations, downgrade to base."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from service import migrations
from service.db import make_engine
from service.models import Base

EXPECTED_TABLES = {
    "tenants",
    "api_keys",
    "artifacts",
    "jobs",
    "job_stages",
    "job_layers",
    "job_events",
    "idempotency_keys",
    "webhook_endpoints",
    "webhook_deliveries",
    "alembic_version",
}


def _check_roundtrip(url: str) -> None:
    migrations.upgrade(url)
    engine = make_engine(url)
    try:
        assert migrations.current_revision(engine) == migrations.head_revision(url)
        assert migrations.is_up_to_date(url)
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) == EXPECTED_TABLES
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            diff = compare_metadata(context, Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
        migrations.downgrade(url, "base")
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
        assert migrations.current_revision(engine) is None
        migrations.upgrade(url)  # and back up again
        assert migrations.is_up_to_date(url)
    finally:
        engine.dispose()


def test_sqlite_upgrade_autogenerate_downgrade(tmp_path: Path) -> None:
    _check_roundtrip(f"sqlite:///{tmp_path / 'fresh.db'}")


@pytest.mark.postgres
def test_postgres_upgrade_autogenerate_downgrade(pg_url: str) -> None:
    _check_roundtrip(pg_url)


def test_cli_db_upgrade(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["db", "upgrade", "--url", url]) == 0
    assert "head" in capsys.readouterr().out
    assert migrations.is_up_to_date(url)
    assert main(["db", "downgrade", "--url", url, "--revision", "base"]) == 0
    assert not migrations.is_up_to_date(url)
