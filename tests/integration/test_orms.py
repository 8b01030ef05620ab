"""ORMs through the proxy: Django's save() (a version field, and every field written back),
SQLAlchemy's ORM flush with and without its own version_id_col, and a pool that rolls back on
check-in. Each race also runs directly against PostgreSQL, where the update is lost."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.locking import make_database, write_rules

SCHEMA = """
CREATE TABLE dj_items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL,
                       version int NOT NULL DEFAULT 1);
CREATE TABLE dj_notes (id int PRIMARY KEY, title text NOT NULL, body text NOT NULL);
CREATE TABLE sa_items (id int PRIMARY KEY, name text NOT NULL, version int NOT NULL DEFAULT 1);
CREATE TABLE sa_plain (id int PRIMARY KEY, name text NOT NULL, version int NOT NULL DEFAULT 1);
INSERT INTO dj_items VALUES (1, 'mug', 10, 1);
INSERT INTO dj_notes VALUES (1, 'todo', 'milk');
INSERT INTO sa_items VALUES (1, 'mug', 1);
INSERT INTO sa_plain VALUES (1, 'mug', 1), (2, 'cup', 1);
"""

RULES = """
version: 1
tables:
  - {table: dj_items, strategy: version, version_column: version}
  - {table: dj_notes, strategy: columns, check: any}
  - {table: sa_items, strategy: version, version_column: version}
  - {table: sa_plain, strategy: version, version_column: version}
"""


@pytest.fixture
def targets(pg, proxy_factory, tmp_path):
    """(database name, {"proxy": (host, port), "direct": (host, port)})"""
    db = make_database(pg.dsn, SCHEMA)
    proxy = proxy_factory(rules=write_rules(tmp_path, RULES))
    return db, {"proxy": (proxy.host, proxy.port), "direct": (pg.host, pg.port)}, pg


def _dsn(db: str, where: tuple[str, int]) -> str:
    return f"postgresql://postgres@{where[0]}:{where[1]}/{db}"


@pytest.mark.parametrize("via", ["proxy", "direct"])
def test_django_save_with_a_version_field_and_with_every_field(targets, via):
    import django
    from django.conf import settings

    db, where, _ = targets
    host, port = where[via]
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": db,
        "USER": "postgres",
        "HOST": host,
        "PORT": str(port),
    }
    if not settings.configured:
        settings.configure(
            DATABASES={"default": dict(database), "other": dict(database)},
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    from django.db import OperationalError, connections, models

    for alias in ("default", "other"):
        connections[alias].close()
        connections[alias].settings_dict.update(database)

    if not hasattr(test_django_save_with_a_version_field_and_with_every_field, "models"):

        class Item(models.Model):
            name = models.TextField()
            qty = models.IntegerField()
            version = models.IntegerField(default=1)

            class Meta:
                app_label = "optimist_tests"
                db_table = "dj_items"
                managed = False

        class Note(models.Model):
            title = models.TextField()
            body = models.TextField()

            class Meta:
                app_label = "optimist_tests"
                db_table = "dj_notes"
                managed = False

        test_django_save_with_a_version_field_and_with_every_field.models = (Item, Note)
    Item, Note = test_django_save_with_a_version_field_and_with_every_field.models

    try:
        for model, change_a, change_b in (
            (Item, ("name", "a"), ("qty", 5)),
            (Note, ("title", "a"), ("body", "eggs")),
        ):
            a = model.objects.using("default").get(pk=1)
            b = model.objects.using("other").get(pk=1)
            setattr(a, *change_a)
            a.save(using="default")  # every field written back, the version as read
            setattr(b, *change_b)
            if via == "proxy":
                with pytest.raises(OperationalError) as err:
                    b.save(using="other")
                assert isinstance(err.value.__cause__, psycopg.errors.SerializationFailure)
            else:
                b.save(using="other")
            fresh = model.objects.using("default").get(pk=1)
            # through the proxy a's change stands; direct, b's save wrote the old value back
            assert (getattr(fresh, change_a[0]) == change_a[1]) == (via == "proxy")
    finally:
        for alias in ("default", "other"):
            connections[alias].close()


def _sqlalchemy_models(versioned: bool):
    from sqlalchemy import Integer, Text
    from sqlalchemy.orm import DeclarativeBase, mapped_column

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "sa_items" if versioned else "sa_plain"
        id = mapped_column(Integer, primary_key=True)
        name = mapped_column(Text)
        version = mapped_column(Integer)
        if versioned:
            __mapper_args__ = {"version_id_col": version}

    return Item


@pytest.mark.parametrize("via", ["proxy", "direct"])
@pytest.mark.parametrize("versioned", [True, False], ids=["version_id_col", "plain"])
def test_sqlalchemy_orm_flush(targets, via, versioned):
    from sqlalchemy import create_engine
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session
    from sqlalchemy.orm.exc import StaleDataError

    db, where, _ = targets
    engine = create_engine(_dsn(db, where[via]).replace("postgresql://", "postgresql+psycopg://"))
    Item = _sqlalchemy_models(versioned)
    try:
        with Session(engine) as a, Session(engine) as b:
            item_a, item_b = a.get(Item, 1), b.get(Item, 1)
            item_a.name = "a"
            a.commit()
            item_b.name = "b"
            if via == "proxy" or versioned:
                # plain model through the proxy: 40001 from PostgreSQL. With version_id_col,
                # SQLAlchemy's own `AND version = :old` excludes the changed row before the
                # proxy's check sees it, so SQLAlchemy reports it (StaleDataError), both ways
                with pytest.raises((OperationalError, StaleDataError)) as err:
                    b.commit()
                if not versioned:
                    assert isinstance(err.value, OperationalError)
                    assert isinstance(err.value.orig, psycopg.errors.SerializationFailure)
            else:
                b.commit()  # the plain model direct: a's change is lost
        with engine.connect() as c:
            name, version = c.exec_driver_sql(
                f"SELECT name, version FROM {Item.__tablename__} WHERE id = 1"
            ).one()
        assert name == ("b" if via == "direct" and not versioned else "a")
        if versioned:
            assert version == 2  # SQLAlchemy's increment and the proxy's bump agree
    finally:
        engine.dispose()


@pytest.mark.parametrize("via", ["proxy", "direct"])
def test_pool_rolling_back_on_check_in_keeps_what_was_read(targets, via):
    """SQLAlchemy's pool rolls back every connection it gets back: the read in that
    transaction still counts for the next checkout's write (same server connection)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    db, where, _ = targets
    dsn = _dsn(db, where[via])
    engine = create_engine(
        dsn.replace("postgresql://", "postgresql+psycopg://"), pool_size=1, max_overflow=0
    )
    try:
        with engine.connect() as c:  # checked in without commit: rolled back
            c.execute(text("SELECT * FROM sa_plain WHERE id = 2")).all()
        with psycopg.connect(dsn, autocommit=True) as other:
            other.execute("UPDATE sa_plain SET name = 'other' WHERE id = 2")
        with engine.connect() as c:
            stale = text("UPDATE sa_plain SET name = 'pool' WHERE id = 2")
            if via == "proxy":
                with pytest.raises(OperationalError) as err:
                    c.execute(stale)
                assert isinstance(err.value.orig, psycopg.errors.SerializationFailure)
            else:
                c.execute(stale)
                c.commit()
        with psycopg.connect(dsn) as check:
            (name,) = check.execute("SELECT name FROM sa_plain WHERE id = 2").fetchone()
        assert name == ("other" if via == "proxy" else "pool")
    finally:
        engine.dispose()
