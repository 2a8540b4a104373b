"""Kernel trees side by side in one process: the installed kernels (``stbench.kernels``) and
another tree's (a base revision's, or a planted variant's) imported under another module name.

A kernel tree is a folder shaped like the repository's ``kernels/`` (one package per backend).
``KernelTree.from_revision`` extracts ``kernels/`` of a git revision with ``git archive`` into a
private temporary folder; ``KernelTree.from_dir`` takes a checkout (or an extracted tree) of the
repository, or its ``kernels`` folder itself, as on a machine without the git history. The tree
is imported as the package ``ALIAS_PREFIX + name`` (its own ``kernels/__init__.py``, its
subpackages found below it), so its modules and the installed ones live in one process; its
relative imports stay inside it, while its absolute imports (``stbench.layouts``,
``stbench.backends``) resolve to THIS tree's stbench: the base's kernels run on the head's
layouts and device plan. A tree whose kernels need another plan format fails to import or to
run; ``PlanMismatch`` says so in one line.

Each backend package of a tree is imported whole when first asked for (every module in it,
not only those its backend module imports at once), with ``torch.library.custom_op``
namespaces renamed to the tree's alias for the duration, so a second copy of a custom op
(``stbench::triton_sparse_attn``) does not replace the installed one. Triton and CuPy cache
compiled kernels by source, so two identical trees share their binaries.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import itertools
import pkgutil
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import ModuleType

import torch

from stbench import backends

from .problems import package_of

ALIAS_PREFIX = "stbench_tree_"
KERNELS = "kernels"
GIT_TIMEOUT_S = 60
_aliases = itertools.count()


class TreeError(ValueError):
    """A kernel tree cannot be found, extracted or imported; the message says why and the fix."""


class PlanMismatch(TreeError):
    """The tree's kernels need a layouts / plan interface this stbench does not have."""


def repo_root() -> Path:
    """The checkout whose revisions and kernels a command reads by default: the source folder
    of an editable install (the checkout this stbench is imported from), else the git checkout
    holding the current directory (a regular install run from a checkout), else the current
    directory."""
    source = Path(__file__).resolve().parents[2]
    if (source / KERNELS / "__init__.py").is_file():
        return source
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return Path.cwd()
    return Path(top.stdout.strip()) if top.returncode == 0 else Path.cwd()


def git(args: list[str], root: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise TreeError(f"git failed ({exc}): install git, or pass --base-dir PATH") from None


def resolve_revision(rev: str, root: Path | None = None) -> str:
    """The commit sha of ``rev`` in the checkout (TreeError with the fix when it is not one)."""
    root = root or repo_root()
    if not rev or rev.startswith("-"):
        raise TreeError(f"--base {rev!r} must name a git revision (a branch, tag or sha)")
    proc = git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], root)
    if proc.returncode != 0:
        inside = git(["rev-parse", "--git-dir"], root).returncode == 0
        if not inside:
            raise TreeError(f"--base {rev}: {root} is not a git checkout: pass --base-dir PATH "
                            "(a checkout or an extracted tree of the base) instead")
        raise TreeError(f"--base {rev}: no such revision in {root}: check `git log`, or fetch "
                        "it first")
    return proc.stdout.decode().strip()


def layouts_differ(rev: str, root: Path | None = None) -> bool:
    """Whether ``layouts/`` of revision ``rev`` differs from this checkout's working tree (the
    base's kernels then run on layouts they were not written against)."""
    return git(["diff", "--quiet", rev, "--", "layouts"], root or repo_root()).returncode == 1


def extract_revision(rev: str, dest: Path, root: Path | None = None) -> Path:
    """Write ``kernels/`` of revision ``rev`` under ``dest`` (``git archive``); returns
    ``dest / 'kernels'``."""
    root = root or repo_root()
    sha = resolve_revision(rev, root)
    proc = git(["archive", "--format=tar", sha, KERNELS], root)
    if proc.returncode != 0:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise TreeError(f"--base {rev}: git archive of {KERNELS}/ failed "
                        f"({msg[-1] if msg else 'no message'}): does {rev} have a kernels/ "
                        "folder?")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / KERNELS


def kernels_dir_of(path: Path) -> Path:
    """``path/kernels`` when ``path`` is a checkout, else ``path`` itself if it is a kernels
    folder (holds ``__init__.py``)."""
    path = Path(path)
    for cand in (path / KERNELS, path):
        if (cand / "__init__.py").is_file():
            return cand
    raise TreeError(f"{path}: no kernels/__init__.py there: pass a checkout (or an extracted "
                    "tree) of stbench, or its kernels folder")


@contextlib.contextmanager
def own_op_namespace(namespace: str):
    """While active, ``torch.library.custom_op('ns::name', ...)`` defines ``namespace::name``."""
    original = torch.library.custom_op

    def renamed(name, *args, **kwargs):
        if isinstance(name, str) and "::" in name:
            name = f"{namespace}::{name.split('::', 1)[1]}"
        return original(name, *args, **kwargs)

    torch.library.custom_op = renamed
    try:
        yield
    finally:
        torch.library.custom_op = original


def _plan_mismatch(exc: BaseException, label: str) -> PlanMismatch | None:
    text = f"{type(exc).__name__}: {exc}"
    if "stbench.layouts" in text or "Plan" in text or "plan" in text:
        return PlanMismatch(
            f"the kernels of {label} need a layouts/plan interface this tree lacks ({text}); "
            "compare across a plan change with two sweeps instead of a same-process A/B")
    return None


class InstalledKernels:
    """The kernels this stbench is installed with (the head), through the registry."""

    label = "head"

    def module(self, backend: str) -> ModuleType:
        return backends.load(backend)

    def close(self) -> None:
        pass


class KernelTree:
    """A kernel tree imported under its own alias; ``module(backend)`` is its backend module
    (the registry's interface: check_available, attention, config_space, supports)."""

    def __init__(self, kernels_dir: Path, label: str, cleanup: Path | None = None):
        self.kernels_dir = kernels_dir_of(kernels_dir)
        self.label = label
        self.alias = f"{ALIAS_PREFIX}{next(_aliases)}"
        self._cleanup = cleanup
        spec = importlib.util.spec_from_file_location(
            self.alias, self.kernels_dir / "__init__.py",
            submodule_search_locations=[str(self.kernels_dir)])
        self._package = importlib.util.module_from_spec(spec)
        sys.modules[self.alias] = self._package
        try:
            spec.loader.exec_module(self._package)
        except Exception as exc:  # noqa: BLE001 - a broken tree is one line, not a traceback
            self.close()
            raise TreeError(f"{label}: {self.kernels_dir}/__init__.py fails to import: "
                            f"{type(exc).__name__}: {exc}") from None

    @classmethod
    def from_dir(cls, path, label: str | None = None) -> "KernelTree":
        return cls(Path(path), label or str(path))

    @classmethod
    def from_revision(cls, rev: str, root: Path | None = None) -> "KernelTree":
        tmp = Path(tempfile.mkdtemp(prefix="stbench-base-"))
        try:
            kdir = extract_revision(rev, tmp, root)
            return cls(kdir, f"base {rev}", cleanup=tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def module(self, backend: str) -> ModuleType:
        """The tree's module for ``backend`` (BackendUnavailable when the tree has no such
        package or it fails to import here; PlanMismatch when it needs another plan)."""
        rel = package_of(backend)
        package, _, _ = rel.rpartition(".")
        name = f"{self.alias}.{rel}"
        if name in sys.modules:
            return sys.modules[name]
        pkg_dir = self.kernels_dir.joinpath(*package.split(".")) if package else self.kernels_dir
        if not (pkg_dir / "__init__.py").is_file() and package:
            raise backends.BackendUnavailable(
                f"{self.label} has no kernels/{package.replace('.', '/')} package: backend "
                f"{backend!r} did not exist there")
        info = backends.info(backend)
        for pkg in info.requires:
            if importlib.util.find_spec(pkg) is None:
                raise backends.BackendUnavailable(
                    f"backend {backend!r} needs the package {pkg!r}: {info.install_hint}")
        try:
            with own_op_namespace(self.alias):
                if package:
                    prefix = f"{self.alias}.{package}."
                    importlib.import_module(f"{self.alias}.{package}")
                    for sub in pkgutil.iter_modules([str(pkg_dir)]):
                        if not sub.ispkg:
                            importlib.import_module(prefix + sub.name)
                return importlib.import_module(name)
        except ImportError as exc:
            mismatch = _plan_mismatch(exc, self.label)
            if mismatch is not None:
                raise mismatch from None
            raise backends.BackendUnavailable(
                f"{self.label}: backend {backend!r} fails to import ({exc})") from None

    def close(self) -> None:
        """Forget the tree's modules and remove its extracted files."""
        for name in [m for m in sys.modules if m == self.alias or
                     m.startswith(self.alias + ".")]:
            del sys.modules[name]
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
