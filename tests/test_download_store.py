"""Step 5's store on its own: how a checked body gets its final name (an unnamed
file linked into place on Linux, a temporary file and a rename elsewhere), and
that neither path leaves a half-written image, a temporary file, or an image
without its sidecar."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import REPO
from yandex_reverse.download import store as store_mod
from yandex_reverse.download.checks import FetchFailure
from yandex_reverse.download.fetch import Body, Candidate, Checked
from yandex_reverse.download.store import TEMP_PREFIX, Store, file_name, sidecar_text

URL = "http://sun9-1.userapi.com/impg/a/a.jpg?size=64x48&type=album"


def jpeg(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (seed % 256, 40, 90)).save(out, "JPEG")
    return out.getvalue()


def checked(data: bytes) -> Checked:
    body = Body(
        buffer=bytearray(data),
        temp=None,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        head=data[:64],
        content_type="image/jpeg",
        http_status=200,
        final_url=URL,
    )
    return Checked(body=body, fmt="JPEG", width=64, height=48, ext=".jpg", mime="image/jpeg")


def new_store(out: Path) -> Store:
    out.mkdir(exist_ok=True)
    return Store(out, out.parent, known=lambda sha: None)


def final_path(out: Path, url: str = URL) -> Path:
    return out / file_name("img1", "original", 64, 48, url, ".jpg")


def listing(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple]:
    calls: list[tuple] = []
    real = getattr(os, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(store_mod.os, name, spy)
    return calls


unnamed_files = pytest.mark.skipif(
    not getattr(os, "O_TMPFILE", 0) or not os.path.isdir("/proc/self/fd"),
    reason="no O_TMPFILE or /proc here: the store uses temporary files",
)


@unnamed_files
def test_an_unnamed_file_is_linked_into_place_with_no_temp_file_and_no_rename(
    tmp_path, monkeypatch
):
    out = tmp_path / "out"
    store = new_store(out)
    assert store.unnamed  # ext4/tmpfs here take O_TMPFILE
    renames = count_calls(monkeypatch, "replace")
    links = count_calls(monkeypatch, "link")
    seen_at_link: list[list[str]] = []
    real_link = store.link_unnamed

    def link_spy(fd: int, final: Path, url: str) -> None:
        seen_at_link.append(listing(out))  # the sidecar is there before the image
        real_link(fd, final, url)

    monkeypatch.setattr(store, "link_unnamed", link_spy)
    data = jpeg(1)
    stored = store.place(checked(data), Candidate(URL, "original"), "img1")
    final = final_path(out)
    assert stored.path == f"out/{final.name}"
    assert final.read_bytes() == data
    assert listing(out) == sorted([final.name, final.with_suffix(".txt").name])
    assert seen_at_link == [[final.with_suffix(".txt").name]]
    sidecar = sidecar_text(checked(data), Candidate(URL, "original"), "img1", [])
    assert final.with_suffix(".txt").read_bytes() == sidecar.encode("utf-8")
    assert renames == [] and len(links) == 1 and links[0][0].isdigit()  # /proc/self/fd/N
    assert store.unnamed
    # the same permissions as a file written the usual way (umask applied)
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    assert stat.S_IMODE(final.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


@unnamed_files
def test_an_existing_file_under_the_final_name_is_replaced_whole_as_before(tmp_path):
    out = tmp_path / "out"
    store = new_store(out)
    final = final_path(out)
    final.write_bytes(b"an older file of that name")
    data = jpeg(2)
    store.place(checked(data), Candidate(URL, "original"), "img1")
    assert final.read_bytes() == data
    assert listing(out) == sorted([final.name, final.with_suffix(".txt").name])
    assert store.unnamed


@pytest.mark.parametrize("how", ["no O_TMPFILE", "refused by the file system", "no /proc"])
def test_without_unnamed_files_a_temp_file_is_renamed_and_none_is_left(tmp_path, monkeypatch, how):
    out = tmp_path / "out"
    if how == "no O_TMPFILE":
        monkeypatch.setattr(store_mod, "_O_TMPFILE", 0)
    elif how == "no /proc":
        monkeypatch.setattr(store_mod, "_FD_DIR", str(tmp_path / "no-proc"))
    else:
        monkeypatch.setattr(store_mod, "_O_TMPFILE", getattr(os, "O_TMPFILE", 0) or 0x410000)
        real_open = os.open

        def refusing_open(path, flags, *args, **kwargs):
            if flags & store_mod._O_TMPFILE == store_mod._O_TMPFILE:
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(store_mod.os, "open", refusing_open)
    store = new_store(out)
    assert store.unnamed == (how == "refused by the file system")
    renames = count_calls(monkeypatch, "replace")
    links = count_calls(monkeypatch, "link")
    first, second = jpeg(3), jpeg(4)
    store.place(checked(first), Candidate(URL, "original"), "img1")
    assert not store.unnamed  # a refusal turns unnamed files off for the run
    other = URL + "&b"
    store.place(checked(second), Candidate(other, "original"), "img1")
    assert len(renames) == 2 and links == []
    assert all(Path(src).name.startswith(TEMP_PREFIX) for src, _dst in renames)
    assert final_path(out).read_bytes() == first
    assert final_path(out, other).read_bytes() == second
    assert not [n for n in listing(out) if n.startswith(TEMP_PREFIX)]
    assert len(listing(out)) == 4  # two images, two sidecars
    # a name that exists is replaced, as ever
    store.place(checked(second), Candidate(URL, "original"), "img1")
    assert final_path(out).read_bytes() == second and len(listing(out)) == 4


@pytest.mark.parametrize("unnamed", [True, False], ids=["unnamed", "temp file"])
@pytest.mark.parametrize("where", ["sidecar", "last step"])
def test_a_failure_before_the_image_is_in_place_leaves_nothing(
    tmp_path, monkeypatch, unnamed, where
):
    if unnamed and not (getattr(os, "O_TMPFILE", 0) and os.path.isdir("/proc/self/fd")):
        pytest.skip("no O_TMPFILE or /proc here")
    out = tmp_path / "out"
    store = new_store(out)
    store.unnamed = unnamed
    full = OSError(errno.ENOSPC, "No space left on device")

    def fail(*args, **kwargs):
        raise full

    if where == "sidecar":
        monkeypatch.setattr(store, "write_sidecar", fail)
    else:
        monkeypatch.setattr(store_mod.os, "link" if unnamed else "replace", fail)
    with pytest.raises(OSError) as caught:
        store.place(checked(jpeg(5)), Candidate(URL, "original"), "img1")
    assert caught.value is full
    assert listing(out) == []


def test_an_unsafe_name_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    out = tmp_path / "out"
    store = new_store(out)
    monkeypatch.setattr(store_mod, "file_name", lambda *args: "../escape.jpg")
    with pytest.raises(FetchFailure):
        store.place(checked(jpeg(6)), Candidate(URL, "original"), "img1")
    assert listing(out) == [] and not (tmp_path / "escape.jpg").exists()


KILLED_AFTER_THE_SIDECAR = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.test_download_store import checked, jpeg, new_store, final_path
from yandex_reverse.download.fetch import Candidate
out = Path(sys.argv[1])
store = new_store(out)
assert store.unnamed
def killed(fd, final, url):
    os.kill(os.getpid(), signal.SIGKILL)  # between the sidecar and the link
store.link_unnamed = killed
store.place(checked(jpeg(7)), Candidate(sys.argv[3], "original"), "img1")
"""


@unnamed_files
def test_a_kill_before_the_link_leaves_no_image_and_no_temp_file(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_THE_SIDECAR, str(out), str(REPO), URL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    # only the sidecar, which the next run's reconcile removes as a lone sidecar
    assert listing(out) == [final_path(out).with_suffix(".txt").name]


@unnamed_files
def test_a_forked_child_links_its_own_unnamed_file_not_its_parents(tmp_path):
    """/proc/self/fd is held open once per process: a child must not use its parent's,
    where the same number is another file (here a decoy the parent opens meanwhile)."""
    out = tmp_path / "out"
    store = new_store(out)
    store.place(checked(jpeg(8)), Candidate(URL + "&parent", "original"), "img1")  # opens it
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"the parent's file")
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next descriptor is the number the parent takes next
        code = 1
        try:
            os.close(ready_w)
            os.read(ready_r, 1)  # the parent holds the decoy under that number now
            store.place(checked(jpeg(9)), Candidate(URL, "original"), "img1")
            code = 0
        finally:
            os._exit(code)
    os.close(ready_r)
    held = os.open(decoy, os.O_RDONLY)
    try:
        os.write(ready_w, b"x")
        _pid, status = os.waitpid(pid, 0)
    finally:
        os.close(held)
        os.close(ready_w)
    assert os.waitstatus_to_exitcode(status) == 0
    assert final_path(out).read_bytes() == jpeg(9)
