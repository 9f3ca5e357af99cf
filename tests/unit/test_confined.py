"""The confined filesystem API on real directories: every call refuses a symlink
in any component of a path (in the middle and, for calls that would act through
it, at the end), with the openat2 resolver and with the component walk; nothing
outside the root is ever changed, even while a thread swaps a directory for a
symlink under the calls; temporary files do not outlive a crash."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import confined
from reconciler.confined import Batch, ConfinementError, Roots, is_temp_name
from reconciler.model import PermanentError
from tests.providers.conformance import tree_snapshot

RESOLVERS = [
    pytest.param(
        True,
        id="openat2",
        marks=pytest.mark.skipif(
            not confined.openat2_available(), reason="the kernel has no openat2"
        ),
    ),
    pytest.param(False, id="walk"),
]


@pytest.fixture(params=RESOLVERS)
def openat2(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


class Sandbox:
    """A root holding a symlink to an outside directory with a sentinel (setuid
    file, known owner), in the middle (root/a/link/...) and as a whole
    (root/link -> outside, root/flink -> outside/sentinel)."""

    def __init__(self, tmp: Path, openat2: bool) -> None:
        self.root = tmp / "root"
        self.outside = tmp / "outside"
        (self.root / "a").mkdir(parents=True)
        (self.outside / "sub").mkdir(parents=True)
        sentinel = self.outside / "sentinel"
        sentinel.write_text("precious\n")
        os.chmod(sentinel, 0o4755)
        os.chown(sentinel, 1, 1)
        os.chmod(self.outside / "sub", 0o700)
        os.symlink(self.outside, self.root / "a" / "link")
        os.symlink(self.outside, self.root / "link")
        os.symlink(sentinel, self.root / "flink")
        self.roots = Roots([str(self.root)], openat2=openat2)
        self.before = tree_snapshot(self.outside)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def outside_untouched(self) -> None:
        assert tree_snapshot(self.outside) == self.before


@pytest.fixture
def box(tmp_path: Path, openat2: bool) -> Sandbox:
    return Sandbox(tmp_path, openat2)


# every call, with a symlink in the middle of the path: refused, naming the link

Call = Callable[[Batch, str], Any]

CALLS: dict[str, Call] = {
    "lstat": lambda fs, p: fs.lstat(p),
    "read": lambda fs, p: fs.read(p, 100),
    "open_read": lambda fs, p: fs.open_read(p).close(),
    "readlink": lambda fs, p: fs.readlink(p),
    "listdir": lambda fs, p: fs.listdir(p),
    "write_atomic": lambda fs, p: fs.write_atomic(p, b"evil\n", 0o4777, 0, 0),
    "write_atomic-parents": lambda fs, p: fs.write_atomic(p, b"x", 0o644, parents=True),
    "symlink_atomic": lambda fs, p: fs.symlink_atomic("/etc/passwd", p),
    "mkdir": lambda fs, p: fs.mkdir(p, 0o777),
    "mkdir-parents": lambda fs, p: fs.mkdir(p, 0o777, parents=True),
    "makedirs": lambda fs, p: fs.makedirs(p, 0o777),
    "chmod": lambda fs, p: fs.chmod(p, 0o4777),
    "chown": lambda fs, p: fs.chown(p, 0, 0),
    "unlink": lambda fs, p: fs.unlink(p),
    "rmdir": lambda fs, p: fs.rmdir(p),
    "rename-from": lambda fs, p: fs.rename(p, p.rsplit("/link/", 1)[0] + "/moved"),
    "rename-to": lambda fs, p: fs.rename(p.rsplit("/link/", 1)[0] + "/real", p),
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("target", ["sentinel", "sub", "sub/deeper/x", "new"])
def test_a_symlink_in_the_middle_of_a_path_is_refused(
    box: Sandbox, call: Call, target: str
) -> None:
    for prefix in ("a/link", "link"):
        path = box.path(f"{prefix}/{target}")
        with box.roots.batch() as fs, pytest.raises(ConfinementError) as info:
            call(fs, path)
        link = box.path(prefix)
        assert str(info.value) == (
            f"{path} goes through the symlink {link}; refusing to follow it "
            "(nothing is read, written or changed through a link)"
        )
        assert (info.value.path, info.value.component) == (path, link)
        assert isinstance(info.value, PermanentError)  # reported as an outcome
    box.outside_untouched()


# a symlink at the end of the path: acted on as itself, never through

REFUSED_AT_THE_END = ["read", "open_read", "listdir", "chmod", "chown", "rmdir", "makedirs"]


@pytest.mark.parametrize("name", REFUSED_AT_THE_END)
@pytest.mark.parametrize("link", ["link", "flink"])
def test_calls_that_would_act_through_a_final_symlink_are_refused(
    box: Sandbox, name: str, link: str
) -> None:
    path = box.path(link)
    with box.roots.batch() as fs, pytest.raises(ConfinementError, match="symlink"):
        CALLS[name](fs, path)
    assert os.path.islink(path)
    box.outside_untouched()


def test_a_final_symlink_is_observed_read_and_replaced_as_itself(box: Sandbox) -> None:
    link = box.path("flink")
    with box.roots.batch() as fs:
        st = fs.lstat(link)
        assert st is not None and stat.S_ISLNK(st.st_mode)
        assert fs.readlink(link) == str(box.outside / "sentinel")
        with pytest.raises(FileExistsError):
            fs.mkdir(link)
        fs.write_atomic(link, b"mine\n", 0o600)  # replaces the link, not its target
        assert Path(link).read_bytes() == b"mine\n"
        assert not os.path.islink(link)
        fs.unlink(link)
        fs.symlink_atomic("elsewhere", box.path("link"))  # replaces that link
        assert os.readlink(box.path("link")) == "elsewhere"
    box.outside_untouched()


def test_paths_outside_the_roots_or_not_normal_are_refused(box: Sandbox) -> None:
    for path in (
        str(box.outside / "sentinel"),
        f"{box.root}/../outside/sentinel",
        f"{box.root}/a/./x",
        f"{box.root}//a",
        "relative/path",
        f"{box.root}/a\0b",
        f"{box.root}x/sibling",  # a sibling whose name starts with the root's
    ):
        with pytest.raises(ConfinementError):
            box.roots.lstat(path)
        with pytest.raises(ConfinementError):
            box.roots.write_atomic(path, b"x", 0o644)
    box.outside_untouched()


def test_the_longest_matching_root_applies(tmp_path: Path, openat2: bool) -> None:
    outer = tmp_path / "outer"
    (outer / "inner").mkdir(parents=True)
    roots = Roots([str(outer), str(outer / "inner")], openat2=openat2)
    assert roots.root_of(str(outer / "inner" / "x")) == str(outer / "inner")
    assert roots.root_of(str(outer / "x")) == str(outer)


# the ordinary calls work


def test_ordinary_calls_on_a_real_tree(tmp_path: Path, openat2: bool) -> None:
    root = tmp_path / "root"
    roots = Roots([str(root)], openat2=openat2)
    old = os.umask(0o077)
    try:
        with roots.batch() as fs:
            assert fs.lstat(f"{root}/a/b/f") is None  # nothing exists yet, the root neither
            fs.write_atomic(f"{root}/a/b/f", b"hello\n", 0o640, 1, 2, parents=True)
            fs.makedirs(f"{root}/c/d")
            fs.symlink_atomic("../a/b/f", f"{root}/c/l", parents=True)
            fs.mkdir(f"{root}/c/d/e", 0o700)
            fs.chmod(f"{root}/c/d/e", 0o2750)
            fs.chown(f"{root}/c/d/e", 3, 4)
            assert fs.read(f"{root}/a/b/f", 100) == b"hello\n"
            assert fs.read(f"{root}/a/b/f", 2) == b"he"
            with fs.open_read(f"{root}/a/b/f") as handle:
                assert handle.read() == b"hello\n"
            assert fs.readlink(f"{root}/c/l") == "../a/b/f"
            assert sorted(fs.listdir(f"{root}/c")) == ["d", "l"]
            fs.rename(f"{root}/c/l", f"{root}/a/l2")
    finally:
        os.umask(old)
    st = os.lstat(root / "a" / "b" / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 1, 2)
    st = os.lstat(root / "c" / "d" / "e")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o2750, 3, 4)
    assert os.readlink(root / "a" / "l2") == "../a/b/f"
    roots.unlink(f"{root}/a/l2")
    roots.rmdir(f"{root}/c/d/e")
    assert sorted(os.listdir(root)) == ["a", "c"]


def test_the_root_itself_can_be_created_and_changed(tmp_path: Path, openat2: bool) -> None:
    root = tmp_path / "missing" / "root"
    roots = Roots([str(root)], openat2=openat2)
    assert roots.lstat(str(root)) is None
    roots.mkdir(str(root), parents=True)
    roots.chmod(str(root), 0o711)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o711
    roots.rmdir(str(root))
    assert not root.exists()


def test_a_special_file_is_not_read_and_a_fifo_does_not_block(box: Sandbox) -> None:
    fifo = box.path("a/fifo")
    os.mkfifo(fifo)
    for path in (fifo, box.path("a")):  # a FIFO, a directory
        with pytest.raises(ConfinementError, match="not a regular file"):
            box.roots.read(path, 10)
        with pytest.raises(ConfinementError, match="not a regular file"):
            box.roots.open_read(path)


def test_a_regular_file_in_the_way_of_a_parent(box: Sandbox) -> None:
    Path(box.path("a/file")).write_text("x")
    assert box.roots.lstat(box.path("a/file/below")) is None
    with pytest.raises(NotADirectoryError):
        box.roots.write_atomic(box.path("a/file/below"), b"x", 0o644, parents=True)


# no /proc: the named temporary file and the chmod through an open descriptor


def test_without_proc_writes_use_a_named_temp_and_chmod_an_open_file(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(confined, "_proc_fd", False)
    path = box.path("a/f")
    box.roots.write_atomic(path, b"x\n", 0o600)
    box.roots.chmod(path, 0o640)
    box.roots.chown(path, 5, 6)
    st = os.lstat(path)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 5, 6)
    assert sorted(os.listdir(box.path("a"))) == ["f", "link"]
    for name in ("link", "flink"):
        with pytest.raises(ConfinementError):
            box.roots.chmod(box.path(name), 0o777)
        with pytest.raises(ConfinementError):
            box.roots.chown(box.path(name), 0, 0)
    box.outside_untouched()


# a failed write leaves nothing behind


@pytest.mark.parametrize("proc", [True, False], ids=["O_TMPFILE", "named-temp"])
def test_a_failed_write_leaves_no_temp_file_and_the_old_object(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch, proc: bool
) -> None:
    monkeypatch.setattr(confined, "_proc_fd", proc)
    busy = Path(box.path("a/busy"))
    busy.mkdir()
    (busy / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        box.roots.write_atomic(str(busy), b"x", 0o644)  # rename onto a directory fails
    assert sorted(os.listdir(box.path("a"))) == ["busy", "link"]
    assert os.listdir(busy) == ["keep"]


# crash-clean: leftovers of a killed run are swept before anything else there


def _leftover(directory: Path, name: str = "f") -> Path:
    temp = directory / f".{name}.0123456789abcdef{confined.TEMP_SUFFIX}"
    temp.write_text("half written")
    return temp


def test_temp_names_are_recognisable_and_fit_name_max(tmp_path: Path) -> None:
    long_name = "x" * 255
    temp = confined._temp_name(long_name)
    assert is_temp_name(temp)
    assert len(os.fsencode(temp)) <= 255
    assert is_temp_name(".a\nb.0123456789abcdef.reconciler.tmp")
    for other in (".f.tmp", ".f.0123abcd.tmp", "f.0123456789abcdef.reconciler.tmp", ".f.swp"):
        assert not is_temp_name(other)
    roots = Roots([str(tmp_path)])
    roots.write_atomic(f"{tmp_path}/{long_name}", b"x", 0o644)
    assert os.listdir(tmp_path) == [long_name]


@pytest.mark.parametrize("proc", [True, False], ids=["O_TMPFILE", "named-temp"])
def test_leftover_temp_files_are_swept_before_a_write(
    tmp_path: Path, openat2: bool, monkeypatch: pytest.MonkeyPatch, proc: bool
) -> None:
    monkeypatch.setattr(confined, "_proc_fd", proc)
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    stale = [_leftover(root / "d"), _leftover(root / "d", "other.conf")]
    mine = [root / "d" / ".f.tmp", root / "d" / ".f.0123abcd.tmp", root / "d" / "notes"]
    for path in mine:
        path.write_text("not reconciler's")
    roots = Roots([str(root)], openat2=openat2)

    with roots.batch() as fs:
        assert fs.lstat(str(root / "d" / "g")) is None  # observing sweeps nothing
        assert all(path.exists() for path in stale)
        fs.write_atomic(str(root / "d" / "g"), b"new\n", 0o644)

    assert sorted(os.listdir(root / "d")) == sorted(p.name for p in [*mine, root / "d" / "g"])


def test_a_directory_holding_only_leftovers_can_be_removed(box: Sandbox) -> None:
    directory = Path(box.path("a/d"))
    directory.mkdir()
    _leftover(directory)
    _leftover(directory, "x")
    box.roots.rmdir(str(directory))
    assert not directory.exists()
    # anything else still keeps it
    directory.mkdir()
    _leftover(directory)
    (directory / "user-file").write_text("x")
    with pytest.raises(OSError) as info:
        box.roots.rmdir(str(directory))
    assert info.value.errno == errno.ENOTEMPTY
    assert os.listdir(directory) == ["user-file"]


def test_a_sweep_spares_temp_files_being_written_now(tmp_path: Path) -> None:
    """Two threads writing into one directory: one's sweep must not remove the
    other's named temporary file (no write may fail)."""
    roots = Roots([str(tmp_path)])
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(300):
                with roots.batch() as fs:  # a new batch sweeps again
                    fs.write_atomic(f"{tmp_path}/f{n}", f"{i}\n".encode(), 0o644)
                    fs.symlink_atomic(f"t{i}", f"{tmp_path}/l{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(os.listdir(tmp_path)) == ["f0", "f1", "f2", "l0", "l1", "l2"]


# batches keep directory descriptors


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_batch_walks_each_directory_once_and_bounds_its_descriptors(
    tmp_path: Path, openat2: bool
) -> None:
    root = tmp_path / "root"
    for d in range(300):
        (root / f"d{d}").mkdir(parents=True)
        for f in range(5):
            (root / f"d{d}" / f"f{f}").write_text("x")
    roots = Roots([str(root)], openat2=openat2)
    before = _open_fds()
    with roots.batch() as fs:
        for f in range(5):
            for d in range(10):
                assert fs.lstat(f"{root}/d{d}/f{f}") is not None
        assert _open_fds() - before <= 10 + 1  # ten directories and the root
        for d in range(300):
            assert fs.read(f"{root}/d{d}/f0", 10) == b"x"
        assert _open_fds() - before <= confined._MAX_CACHED
    assert _open_fds() == before


# the race: a directory swapped for a symlink while the calls run


@pytest.mark.parametrize("fresh_batches", [True, False], ids=["one-shot", "one-batch"])
def test_a_directory_swapped_for_a_symlink_never_carries_a_call_outside(
    tmp_path: Path, openat2: bool, fresh_batches: bool
) -> None:
    box = Sandbox(tmp_path, openat2)
    sub = Path(box.path("sub"))
    sub.mkdir()
    aside = Path(box.path("sub.real"))
    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps

        def put(make: Callable[[], None]) -> None:
            while True:
                try:
                    return make()
                except OSError:  # a write with parents=True made a sub in the window
                    shutil.rmtree(sub, ignore_errors=True)

        while not stop.is_set():
            os.rename(sub, aside)
            put(lambda: os.symlink(box.outside, sub))
            os.unlink(sub)
            put(lambda: os.rename(aside, sub))
            swaps += 1

    calls: list[Call] = [
        lambda fs, p: fs.write_atomic(f"{p}/sentinel", b"evil\n", 0o4777, 0, 0),
        lambda fs, p: fs.write_atomic(f"{p}/new/f", b"evil\n", 0o777, parents=True),
        lambda fs, p: fs.chmod(f"{p}/sentinel", 0o777),
        lambda fs, p: fs.chmod(f"{p}/sub", 0o777),
        lambda fs, p: fs.chown(f"{p}/sentinel", 0, 0),
        lambda fs, p: fs.unlink(f"{p}/sentinel"),
        lambda fs, p: fs.rmdir(f"{p}/sub"),
        lambda fs, p: fs.mkdir(f"{p}/made"),
        lambda fs, p: fs.symlink_atomic("x", f"{p}/sentinel"),
        lambda fs, p: fs.read(f"{p}/sentinel", 100),
    ]
    thread = threading.Thread(target=swap)
    thread.start()
    attempts = refused = 0
    deadline = time.monotonic() + 2.0
    try:
        with box.roots.batch() as shared:
            while time.monotonic() < deadline:
                for call in calls:
                    attempts += 1
                    try:
                        if fresh_batches:
                            with box.roots.batch() as fs:
                                call(fs, str(sub))
                        else:
                            call(shared, str(sub))
                    except ConfinementError:
                        refused += 1
                    except OSError:
                        pass  # the directory moved under us: fine, as long as nothing leaked
    finally:
        stop.set()
        thread.join()
    assert swaps > 10 and attempts > 100
    if fresh_batches:
        assert refused > 0  # the swap was seen
    box.outside_untouched()
