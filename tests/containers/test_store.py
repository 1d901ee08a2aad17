"""Image ids, saved inputs, the store's operations and lock, and log redaction."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import pytest

from containers.builder import Builder, redact
from containers.errors import ImageNotFound, SpecError
from containers.store import BuildInputs, ImageStore, StepFile, inputs_from_request, inputs_from_step
from tests.containers.conftest import write_hello_step

BUILDER = "apptainer version 1.4.5; hpcwaas-render 1; amd64"


def test_image_id_covers_spec_files_and_builder(tmp_path: Path) -> None:
    spec = write_hello_step(tmp_path / "a")
    base = inputs_from_step(spec).image_id(BUILDER)
    assert len(base) == 64
    assert inputs_from_step(spec).image_id(BUILDER) == base  # stable
    assert inputs_from_step(spec).image_id(BUILDER.replace("1.4.5", "1.4.6")) != base
    (tmp_path / "a" / "greet.sh").write_text("#!/bin/sh\necho changed\n")
    assert inputs_from_step(spec).image_id(BUILDER) != base
    (tmp_path / "a" / "unrelated.txt").write_text("not copied into the image")
    changed = inputs_from_step(spec).image_id(BUILDER)
    (tmp_path / "a" / "unrelated.txt").write_text("still not copied")
    assert inputs_from_step(spec).image_id(BUILDER) == changed


def test_the_name_is_not_part_of_the_id(tmp_path: Path) -> None:
    spec = write_hello_step(tmp_path / "a")
    first = inputs_from_step(spec).image_id(BUILDER)
    spec.write_text(spec.read_text().replace("name: hello", "name: other"))
    assert inputs_from_step(spec).image_id(BUILDER) == first


def test_request_inputs_match_step_inputs(tmp_path: Path) -> None:
    spec = write_hello_step(tmp_path / "a")
    from_step = inputs_from_step(spec)
    import yaml

    files = {"greet.sh": base64.b64encode((tmp_path / "a" / "greet.sh").read_bytes()).decode()}
    from_request = inputs_from_request(yaml.safe_load(spec.read_text()), None, files, ["greet.sh"])
    assert from_request.image_id(BUILDER) == from_step.image_id(BUILDER)
    # The mode is part of the id: the same bytes, not executable, make another image.
    assert inputs_from_request(yaml.safe_load(spec.read_text()), None, files).image_id(BUILDER) != \
        from_step.image_id(BUILDER)


@pytest.mark.parametrize(
    ("spec", "dockerfile", "files", "match"),
    [
        (None, None, {}, "exactly one of"),
        ({}, "FROM debian:bookworm\n", {}, "exactly one of"),
        ({"files": [{"src": "a.txt", "dest": "/a"}]}, None, {}, "a.txt is copied into the image but was not sent"),
        ({}, None, {"../x": "YQ=="}, "not a plain relative path"),
        ({}, None, {"a.txt": "%%%"}, "not valid base64"),
    ],
)
def test_bad_requests(spec: dict | None, dockerfile: str | None, files: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        inputs_from_request(spec, dockerfile, files)


def test_missing_step_file_is_named(tmp_path: Path) -> None:
    spec = write_hello_step(tmp_path / "a")
    (tmp_path / "a" / "greet.sh").unlink()
    with pytest.raises(SpecError, match=r"greet\.sh does not exist"):
        inputs_from_step(spec)


def test_folder_sources_copy_every_file(tmp_path: Path) -> None:
    step = tmp_path / "s"
    (step / "app" / "sub").mkdir(parents=True)
    (step / "app" / "a.py").write_text("a")
    (step / "app" / "sub" / "b.py").write_text("b")
    (step / "image.yaml").write_text("files: [{src: app, dest: /opt/app}]\n")
    assert sorted(inputs_from_step(step / "image.yaml").files) == ["app/a.py", "app/sub/b.py"]


def test_inputs_round_trip(tmp_path: Path) -> None:
    inputs = inputs_from_step(write_hello_step(tmp_path / "a"))
    inputs.save(tmp_path / "saved")
    loaded = BuildInputs.load(tmp_path / "saved")
    assert loaded.image_id(BUILDER) == inputs.image_id(BUILDER)
    docker = BuildInputs("dockerfile", dockerfile="FROM debian:bookworm\nCOPY x /x\n", files={"x": StepFile(b"1")})
    docker.save(tmp_path / "d")
    assert BuildInputs.load(tmp_path / "d").image_id(BUILDER) == docker.image_id(BUILDER)


def test_store_add_inspect_list_delete(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    image_id = "a" * 64
    assert not store.has(image_id) and store.list() == []
    sif = tmp_path / "built.sif"
    sif.write_bytes(b"SIF" * 1000)
    meta = store.add(image_id, sif, definition="Bootstrap: debootstrap\n%labels\nmaintainer team a\n",
                     name="x", builder=BUILDER)
    assert store.has(image_id) and not sif.exists()
    assert meta.size == 3000 and meta.labels == {"maintainer": "team a"}
    assert store.inspect(image_id).definition.startswith("Bootstrap: debootstrap")
    assert [m.id for m in store.list()] == [image_id]
    assert store.delete(image_id) is True and not store.has(image_id)
    assert store.delete(image_id) is False
    with pytest.raises(ImageNotFound):
        store.inspect(image_id)
    with pytest.raises(ImageNotFound, match="not an image id"):
        store.folder("../../etc")


def test_lock_serialises_one_id(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    order: list[str] = []

    def hold(name: str) -> None:
        with store.lock("b" * 64):
            order.append(f"{name}-in")
            time.sleep(0.2)
            order.append(f"{name}-out")

    threads = [threading.Thread(target=hold, args=(n,)) for n in ("one", "two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert order[0].endswith("-in") and order[1].endswith("-out") and order[0][:3] == order[1][:3]


def test_redaction_of_secrets_in_logs() -> None:
    text = (
        "token=hpcw_abcdefghijklmnop and hvs.CAESIJ1234567890abcdefghijk\n"
        "PASSWORD: hunter2\nfetching https://user:s3cret@example.org/x\n"
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
        "Authorization: Bearer abc.def\nplain line\n"
    )
    out = redact(text)
    for secret in ("hpcw_abcdefghijklmnop", "CAESIJ1234567890", "hunter2", "s3cret", "b3BlbnNzaC1rZXkt", "abc.def"):
        assert secret not in out
    assert "[REDACTED PRIVATE KEY]" in out and "plain line" in out


def test_unprepared_builder_says_why_at_once(unavailable_builder: Builder) -> None:
    began = time.monotonic()
    status = unavailable_builder.status()
    assert not status.available and "not prepared" in (status.reason or "")
    assert "python -m hpcwaas.stack up --only apptainer" in (status.hint or "")
    assert time.monotonic() - began < 1
