"""The CPU emulator builds and loads its libraries only from a private folder: the user's cache
folder (owned by the user, mode 0700), else a fresh temporary folder; never a fixed path in the
shared temp directory, where another local user could plant a library."""

import os
import stat
import tempfile

import pytest

from stbench.kernels.cupy import emulate

TINY = 'extern "C" int emu_answer() { return 42; }\n'


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("STBENCH_CACHE_DIR", str(tmp_path / "cache"))
    emulate.build_dir.cache_clear()
    yield tmp_path
    emulate.build_dir.cache_clear()


def _private(path) -> bool:
    st = os.lstat(path)
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and stat.S_IMODE(st.st_mode) == emulate.PRIVATE_MODE)


@pytest.mark.skipif(emulate.available() is not None, reason="no C++ compiler")
def test_libraries_are_built_in_the_users_private_cache_folder(fresh):
    lib = emulate._build("answer", TINY, [])
    assert lib.emu_answer() == 42
    folder = fresh / "cache" / "cupy_emu"
    assert _private(folder) and any(p.suffix == ".so" for p in folder.iterdir())
    shared = os.path.join(tempfile.gettempdir(), "stbench_cupy_emu")
    assert not any(str(p).startswith(shared) for p in (folder, emulate.build_dir()))


def test_a_loose_folder_is_made_private(fresh):
    folder = fresh / "cache" / "cupy_emu"
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    assert emulate.build_dir() == folder and _private(folder)


def test_a_link_or_someone_elses_folder_is_not_used(fresh, monkeypatch):
    elsewhere = fresh / "planted"
    elsewhere.mkdir()
    (fresh / "cache").mkdir()
    (fresh / "cache" / "cupy_emu").symlink_to(elsewhere)
    d = emulate.build_dir()
    assert d != fresh / "cache" / "cupy_emu" and _private(d)  # a fresh mkdtemp
    emulate.build_dir.cache_clear()
    (fresh / "cache" / "cupy_emu").unlink()
    monkeypatch.setattr(os, "getuid", lambda: os.lstat(fresh).st_uid + 1)  # not the owner
    d = emulate.build_dir()
    assert d != fresh / "cache" / "cupy_emu" and stat.S_IMODE(os.lstat(d).st_mode) == 0o700
