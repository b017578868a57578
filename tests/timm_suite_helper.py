"""Run timm's own model tests (``tests/test_models.py`` of the installed timm's source distribution) on lifevit.

Two roles, one file:

* :func:`fetch_timm_tests` downloads the source distribution of the *installed* timm version with pip
  (``pip download --no-binary :all: --no-deps timm==X``) into a cache folder and unpacks its ``tests/`` folder
  and pytest configuration (timm's markers). Nothing of timm's test code is kept in this repository.
* Loaded as a pytest plugin (``-p timm_suite_helper``), it imports lifevit before timm's test module is collected
  and narrows every ``timm.list_models(...)`` call to lifevit's models. timm's own filters (module names,
  ``EXCLUDE_*`` lists, ``name_matches_cfg``) and size limits still decide which test runs on which model; tests
  parametrized with fixed timm model names are deselected. ``LIFEVIT_TIMM_MODELS`` (comma-separated fnmatch
  patterns) narrows the selection further, e.g. to the small models for the fast run.

Command line (what ``tests/test_timm_suite.py`` runs)::

    python tests/timm_suite_helper.py fetch            # print the folder holding timm's test_models.py
    python tests/timm_suite_helper.py run [PYTEST ARGS] # fetch, then run timm's test_models.py on lifevit
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

# TorchScript is deprecated (torch 2.14 warns on torch.jit.script); LIFE models are declared not scriptable in
# lifevit's registry metadata (``lifevit.models.TORCHSCRIPT_EXCLUDE_FILTERS``), as timm's EXCLUDE_JIT_FILTERS do.
SCRIPT_TESTS = ("test_model_forward_torchscript", "test_model_forward_fx_torchscript")

# lifevit ViT families whose names timm's NON_STD_FILTERS ('vit_*', 'deit*', ...) do not match
NON_STD_EXTRA = "t2t_vit_*"

CACHE_ENV = "LIFEVIT_CACHE"
MODELS_ENV = "LIFEVIT_TIMM_MODELS"


def cache_root() -> Path:
    """Folder for downloaded timm sources: ``$LIFEVIT_CACHE`` or ``~/.cache/lifevit``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lifevit")


def fetch_timm_tests(version: Optional[str] = None, cache_dir: Optional[Path] = None, timeout: float = 300) -> Path:
    """Folder holding ``tests/test_models.py`` of timm ``version`` (default: the installed one), fetched once.

    Raises:
        RuntimeError: pip could not fetch the source distribution (no registry access, unknown version).
    """
    if version is None:
        import timm

        version = timm.__version__
    target = (cache_dir or cache_root()) / f"timm-{version}"
    if (target / "tests" / "test_models.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        cmd += ["-q", "-d", tmp, f"timm=={version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise RuntimeError(f"pip download of timm=={version} timed out after {timeout:.0f} s") from err
        archives = sorted(Path(tmp).glob("timm-*.tar.gz"))
        if proc.returncode != 0 or not archives:
            last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"pip could not fetch the source distribution of timm=={version}: {last[0]}")
        staging = Path(tmp) / "unpacked"
        with tarfile.open(archives[0]) as tar:
            # only timm's tests and its pytest configuration: the installed timm package is the one under test
            members = [
                m
                for m in tar.getmembers()
                if m.isfile() and (m.name.split("/")[1:2] == ["tests"] or m.name.endswith("/pyproject.toml"))
            ]
            tar.extractall(staging, members=members, filter="data")
        (top,) = list(staging.iterdir())
        if not (top / "tests" / "test_models.py").is_file():
            raise RuntimeError(f"the source distribution of timm=={version} has no tests/test_models.py")
        if target.exists():  # a concurrent fetch finished first
            return target
        top.rename(target)
    return target


def timm_markers(root: Path) -> List[str]:
    """The pytest markers timm's configuration declares (``name: description`` lines)."""
    import tomllib

    with open(root / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f).get("tool", {}).get("pytest", {}).get("ini_options", {}).get("markers", []))


# ---------------------------------------------------------------------------------------------- pytest plugin
def _selected_models() -> List[str]:
    from lifevit.models import list_lifevit_models

    patterns = [p for p in os.environ.get(MODELS_ENV, "").split(",") if p]
    names = list_lifevit_models()
    if patterns:
        names = [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]
    return names


def pytest_configure(config) -> None:
    import timm

    import lifevit  # noqa: F401  (registers lifevit's models before timm's test module lists them)

    selected = set(_selected_models())
    timm_list_models = timm.list_models

    def list_models(*args, **kwargs):
        return [n for n in timm_list_models(*args, **kwargs) if n.split(".")[0] in selected]

    # timm's test module does ``from timm import list_models`` at import: give it the narrowed one
    timm.list_models = list_models
    config._lifevit_models = selected


def _exclusion(item, model_name: str) -> Optional[str]:
    """Why a (test, model) pair is excluded, or None. Each reason is documented in docs/backbones.md."""
    from lifevit.models import TORCHSCRIPT_EXCLUDE_FILTERS

    test = item.originalname
    if test in SCRIPT_TESTS and any(fnmatch.fnmatch(model_name, f) for f in TORCHSCRIPT_EXCLUDE_FILTERS):
        return (
            "not TorchScript-scriptable (TORCHSCRIPT_EXCLUDE_FILTERS: LIFE models, T2T-ViT; TorchScript is deprecated; "
            "use torch.export)"
        )
    if test == "test_model_default_cfgs" and fnmatch.fnmatch(model_name, NON_STD_EXTRA):
        return (
            "T2T-ViT is a ViT (token features, no spatial map) that timm's NON_STD_FILTERS cannot name (timm has no "
            "T2T); tests/test_timm_suite.py runs timm's test_model_default_cfgs_non_std on it instead"
        )
    return None


def pytest_collection_modifyitems(session, config, items) -> None:
    selected = getattr(config, "_lifevit_models", set())
    keep, drop = [], []
    excluded: Dict[str, str] = {}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = str(params.get("model_name", "")).split(".")[0]
        if name not in selected:
            drop.append(item)  # tests without a model, or with fixed timm model names
            continue
        reason = _exclusion(item, name)
        if reason:
            excluded[item.nodeid] = reason
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    config._lifevit_excluded = excluded


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    excluded = getattr(config, "_lifevit_excluded", {})
    if excluded:
        terminalreporter.write_line(f"lifevit: {len(excluded)} test(s) excluded by lifevit's registry metadata:")
        for nodeid, reason in sorted(excluded.items()):
            terminalreporter.write_line(f"  EXCLUDED {nodeid}: {reason}")


# ----------------------------------------------------------------------------------------------- command line
def run_timm_tests(pytest_args: List[str], models: Optional[str] = None, **kwargs) -> subprocess.CompletedProcess:
    """Run timm's ``test_models.py`` on lifevit's models in a fresh interpreter; returns the finished process.

    Args:
        pytest_args: Extra pytest arguments (``-m``, ``-k``, ``--junitxml``, ...).
        models: Comma-separated fnmatch patterns of lifevit model names (default: all of them).
        **kwargs: Passed to ``subprocess.run``.
    """
    root = fetch_timm_tests()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if models:
        env[MODELS_ENV] = models
    env.pop("GITHUB_ACTIONS", None)  # timm's local (not CI) size limits
    # timm's per-test time limits are sized for its CI runners; on a shared CPU they would measure the machine
    cmd = [sys.executable, "-m", "pytest", "-p", "timm_suite_helper", "-p", "no:cacheprovider", "-p", "no:timeout"]
    cmd += ["--rootdir", str(root), "-c", str(root / "pyproject.toml"), str(root / "tests" / "test_models.py")]
    return subprocess.run(cmd + list(pytest_args), cwd=root, env=env, **kwargs)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("fetch", "run"):
        sys.exit(f"usage: {sys.argv[0]} fetch | run [PYTEST ARGS]")
    if sys.argv[1] == "fetch":
        print(fetch_timm_tests())
    else:
        sys.exit(run_timm_tests(sys.argv[2:], models=os.environ.get(MODELS_ENV)).returncode)
