"""Hostile input names: only regular files are opened; the others are listed, then rejected with a reason."""
import io
import os
import pathlib
import socket
import tarfile
import threading

import pytest

from transforms.io.annotations import AnnotatedImage
from transforms.io.files import NotARegularFile, list_inputs, read_input
from transforms.io.readers import ReadAnnotatedImages, ReadTars


@pytest.fixture
def hostile(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "ok.jpg").write_bytes(b"bytes")
    os.mkfifo(tmp_path / "fifo.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "loop1.jpg").symlink_to(tmp_path / "loop2.jpg")
    (tmp_path / "loop2.jpg").symlink_to(tmp_path / "loop1.jpg")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "socket.jpg"))
    yield tmp_path
    server.close()


def _unblock_after(fifo: pathlib.Path, seconds: float) -> threading.Timer:
    """If a reader blocks on the FIFO, open its write end: the test then fails instead of hanging."""
    timer = threading.Timer(seconds, lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))
    timer.start()
    return timer


@pytest.mark.timeout(60)
def test_only_regular_files_are_read_and_the_others_say_why(hostile):
    assert [pathlib.Path(p).name for p in list_inputs(f"{hostile}/**")] == [
        "dangling.jpg", "fifo.jpg", "loop1.jpg", "loop2.jpg", "ok.jpg", "socket.jpg"]
    assert read_input(str(hostile / "ok.jpg")) == b"bytes"
    timer = _unblock_after(hostile / "fifo.jpg", 10)
    try:
        reasons = {}
        for name in ("fifo.jpg", "dangling.jpg", "loop1.jpg", "socket.jpg"):
            with pytest.raises(NotARegularFile) as raised:
                read_input(str(hostile / name))
            reasons[name] = raised.value.reason.value
    finally:
        timer.cancel()
    assert reasons == {"fifo.jpg": "not_a_regular_file", "dangling.jpg": "dangling_symlink",
                       "loop1.jpg": "symlink_loop", "socket.jpg": "not_a_regular_file"}


@pytest.fixture
def hostile_shards(tmp_path: pathlib.Path) -> pathlib.Path:
    with tarfile.open(tmp_path / "ok.tar", "w") as archive:
        member = tarfile.TarInfo("sample.jpg")
        member.size = 5
        archive.addfile(member, io.BytesIO(b"bytes"))
    os.mkfifo(tmp_path / "x.tar")
    (tmp_path / "dangling.tar").symlink_to(tmp_path / "nowhere.tar")
    (tmp_path / "loop1.tar").symlink_to(tmp_path / "loop2.tar")
    (tmp_path / "loop2.tar").symlink_to(tmp_path / "loop1.tar")
    return tmp_path


@pytest.mark.timeout(60)
def test_tar_shards_that_are_not_regular_files_are_rejected_not_opened(hostile_shards):
    records = ReadTars().record_fn()
    (kept,) = list(records(str(hostile_shards / "ok.tar")))
    assert kept.data == b"bytes"
    timer = _unblock_after(hostile_shards / "x.tar", 10)
    try:
        reasons = {}
        for name in ("x.tar", "dangling.tar", "loop1.tar"):
            (rejection,) = list(records(str(hostile_shards / name)))
            reasons[name] = rejection.reason.value
    finally:
        timer.cancel()
    assert reasons == {"x.tar": "not_a_regular_file", "dangling.tar": "dangling_symlink", "loop1.tar": "symlink_loop"}


@pytest.mark.timeout(60)
def test_images_an_annotation_file_names_are_read_only_if_regular_files(hostile):
    records = ReadAnnotatedImages("coco").record_fn()
    (kept,) = list(records(AnnotatedImage(str(hostile / "ok.jpg"))))
    assert kept.data == b"bytes"
    timer = _unblock_after(hostile / "fifo.jpg", 10)
    try:
        reasons = {}
        for name in ("fifo.jpg", "dangling.jpg", "loop1.jpg", "socket.jpg", "missing.jpg"):
            (rejection,) = list(records(AnnotatedImage(str(hostile / name))))
            reasons[name] = rejection.reason.value
    finally:
        timer.cancel()
    assert reasons == {"fifo.jpg": "not_a_regular_file", "dangling.jpg": "dangling_symlink",
                       "loop1.jpg": "symlink_loop", "socket.jpg": "not_a_regular_file", "missing.jpg": "image_missing"}
