"""Build records on SQLite and PostgreSQL: cache hits, joining, claiming with leases, resuming
after a restart, giving up with a reason. No image is built here: images are placed in the store
(``fake_image``) so the worker's paths run without apptainer."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from containers import service
from containers.builder import Builder
from containers.models import MAX_ATTEMPTS, TERMINAL_STATES, BuildState, Image, ImageBuild
from containers.spec import parse_spec
from containers.store import BuildInputs, ImageStore
from gateway.core.db import make_engine, make_session_factory
from hpcwaas.db import utcnow


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


@pytest.fixture
def builder(builder_dir: Path) -> Builder:
    return Builder(builder_dir)


def inputs(unique: str) -> BuildInputs:
    return BuildInputs("spec", spec=parse_spec({"name": "t", "env": {"TEST_ID": unique}}))


def fake_image(store: ImageStore, image_id: str, tmp_path: Path) -> None:
    sif = tmp_path / f"{image_id}.sif"
    sif.write_bytes(b"not really a SIF")
    store.add(image_id, sif, definition="Bootstrap: debootstrap\n%labels\nk v\n", name="t", builder="test")


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_cached_request_succeeds_at_once(sessions, store, builder, tmp_path, unique) -> None:
    wanted = inputs(unique)
    fake_image(store, wanted.image_id(builder.version()), tmp_path)
    with sessions() as db:
        build = service.request_build(db, owner_id="u1", inputs=wanted, store=store, builder=builder)
        assert build.state == BuildState.SUCCEEDED and build.cached and build.terminal
        image = db.get(Image, build.image_id)
        assert image is not None and image.owner_id == "u1" and image.labels == {"k": "v"}


def test_identical_requests_join_one_build(sessions, store, builder, unique) -> None:
    with sessions() as db:
        first = service.request_build(db, owner_id="u1", inputs=inputs(unique), store=store, builder=builder)
        second = service.request_build(db, owner_id="u2", inputs=inputs(unique), store=store, builder=builder)
        other = service.request_build(db, owner_id="u2", inputs=inputs(unique + "x"), store=store, builder=builder)
    assert first.state == BuildState.QUEUED and first.leader_id is None
    assert second.leader_id == first.id and second.image_id == first.image_id
    assert other.leader_id is None and other.image_id != first.image_id
    assert store.inputs_folder(first.image_id or "").exists()


def test_worker_finishes_a_build_and_its_followers(sessions, store, builder, tmp_path, unique) -> None:
    with sessions() as db:
        leader = service.request_build(db, owner_id="u1", inputs=inputs(unique), store=store, builder=builder)
        follower = service.request_build(db, owner_id="u2", inputs=inputs(unique), store=store, builder=builder)
    fake_image(store, leader.image_id or "", tmp_path)  # built meanwhile, e.g. by `ensure_image`
    worker = service.BuildWorker(sessions, store, builder)
    assert worker.claim() == leader.id
    worker.run(leader.id)
    with sessions() as db:
        done = service.get_build(db, leader.id)
        assert done.state == BuildState.SUCCEEDED and done.cached and done.lease_owner is None
        followed = service.get_build(db, follower.id)
        assert followed.state == BuildState.SUCCEEDED and followed.finished_at is not None
        assert db.get(Image, leader.image_id) is not None


def test_only_one_worker_claims_a_build(sessions, store, builder, unique) -> None:
    with sessions() as db:
        build = service.request_build(db, owner_id="u1", inputs=inputs(unique), store=store, builder=builder)
    workers = [service.BuildWorker(sessions, store, builder) for _ in range(3)]
    claims = [w.claim() for w in workers]
    assert claims.count(build.id) == 1
    with sessions() as db:
        row = db.get(ImageBuild, build.id)
        assert row is not None and row.state == BuildState.RUNNING and row.attempts == 1


def test_a_worker_ignores_builds_whose_inputs_it_cannot_see(sessions, store, builder, tmp_path, unique) -> None:
    with sessions() as db:
        build = service.request_build(db, owner_id="u1", inputs=inputs(unique), store=store, builder=builder)
    elsewhere = service.BuildWorker(sessions, ImageStore(tmp_path / "another-store"), builder)
    assert elsewhere.claim() != build.id


def test_build_of_a_dead_gateway_is_resumed(sessions, store, builder, tmp_path, unique) -> None:
    with sessions() as db:
        build = service.request_build(db, owner_id="u1", inputs=inputs(unique), store=store, builder=builder)
        row = db.get(ImageBuild, build.id)
        assert row is not None
        # As a gateway that crashed mid-build leaves it: running, lease still valid, process gone.
        row.state, row.attempts, row.pid = BuildState.RUNNING, 1, dead_pid()
        row.lease_owner = f"{socket.gethostname()}:{row.pid}:deadbeef"
        row.lease_expires_at = utcnow() + timedelta(minutes=10)
        db.commit()
    fake_image(store, build.image_id or "", tmp_path)
    worker = service.BuildWorker(sessions, store, builder)
    assert worker.recover() >= 1
    assert worker.claim() == build.id
    worker.run(build.id)
    with sessions() as db:
        row = db.get(ImageBuild, build.id)
        assert row is not None and row.state == BuildState.SUCCEEDED and row.attempts == 2
    assert "resumed after an interruption (attempt 2" in store.log_file(build.id).read_text()


def test_a_build_interrupted_too_often_fails_with_the_reason(sessions, store, builder, unique) -> None:
    with sessions() as db:
        build = service.request_build(db, owner_id="u1", inputs=inputs(unique), store=store, builder=builder)
        row = db.get(ImageBuild, build.id)
        assert row is not None
        row.state, row.attempts = BuildState.RUNNING, MAX_ATTEMPTS
        row.lease_owner, row.lease_expires_at = "elsewhere:1:x", utcnow() - timedelta(seconds=1)
        db.commit()
    worker = service.BuildWorker(sessions, store, builder)
    assert worker.claim() == build.id
    worker.run(build.id)
    with sessions() as db:
        row = db.get(ImageBuild, build.id)
        assert row is not None and row.state == BuildState.FAILED
        assert f"interrupted {MAX_ATTEMPTS} times" in (row.message or "")


def test_unavailable_builder_is_a_clear_failed_status(sessions, store, unavailable_builder, unique) -> None:
    with sessions() as db:
        build = service.request_build(db, owner_id="u1", inputs=inputs(unique), store=store,
                                      builder=unavailable_builder)
        assert build.state == BuildState.FAILED and build.state in TERMINAL_STATES
        assert "not prepared" in (build.message or "") and "stack up --only apptainer" in (build.message or "")


def test_nothing_is_left_running_after_the_worker_stops(sessions, store, builder, tmp_path, unique) -> None:
    with sessions() as db:
        build = service.request_build(db, owner_id="u1", inputs=inputs(unique), store=store, builder=builder)
    fake_image(store, build.image_id or "", tmp_path)
    worker = service.BuildWorker(sessions, store, builder, poll_seconds=0.1).start()
    try:
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with sessions() as db:
                if service.get_build(db, build.id).terminal:
                    break
            time.sleep(0.1)
    finally:
        worker.stop()
    with sessions() as db:
        assert db.scalars(select(ImageBuild.state).where(ImageBuild.id == build.id)).one() == BuildState.SUCCEEDED
    assert os.path.exists(store.sif(build.image_id or ""))
