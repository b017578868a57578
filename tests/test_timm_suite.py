"""timm's own model tests on lifevit's models.

The source distribution of the installed timm is fetched with pip (``tests/timm_suite_helper.py``; skipped when
pip cannot reach the package registry) and its ``tests/test_models.py`` is run in two ways:

* as timm runs it, on lifevit's models, with timm's filters and size limits (``run_timm_tests``). The default
  run covers the CPU-scale model of each family; ``-m slow`` covers all of them.
* timm's test functions that timm's *module-name* filters never give to lifevit's modules (``FEAT_INTER_FILTERS``
  names timm's own modules: ``vision_transformer``, ``swin_transformer_v2``, ...) are called on our models
  directly: forward_intermediates, features_only via the feature getter, prune_intermediate_layers, and the
  non-standard config check for T2T-ViT (see ``timm_suite_helper.NON_STD_EXTRA``).

Exclusions (each also printed by the run): TorchScript for LIFE and T2T-ViT models (``TORCHSCRIPT_EXCLUDE_FILTERS``,
TorchScript is deprecated; see docs/backbones.md), and timm's standard config test for T2T-ViT, which is a ViT.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import inspect
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import lifevit  # noqa: F401
from lifevit.models import list_lifevit_models

_spec = importlib.util.spec_from_file_location("timm_suite_helper", Path(__file__).with_name("timm_suite_helper.py"))
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)

# the CPU-scale models (a LIFE ViT, its plain twin, the CNN) by default; every model under -m slow
FAST_MODELS = ["vit_lite_patch4_28", "vit_lite_patch4_28_life", "resnet18_lite_28"]
# timm's tests that its module-name filter (FEAT_INTER_FILTERS) never selects for lifevit's vit / t2t_vit / swinv2
MODULE_FILTERED_TESTS = [
    "test_model_forward_intermediates_features",
    "test_model_forward_intermediates",
    "test_prune_intermediate_layers_contract",
]


def _module_of(name: str) -> str:
    """The module name timm's ``list_models(module=...)`` filters match (``vit``, ``t2t_vit``, ``swinv2``, ...)."""
    import timm

    return timm.models.model_entrypoint(name).__module__.split(".")[-1]


NOT_IN_TIMM_MODULES = [n for n in list_lifevit_models() if _module_of(n) != "resnet"]
DIRECT_FAST = ["vit_lite_patch4_28_life", "t2t_vit_12_32_life"]


def _direct_cases():
    cases = []
    for test in MODULE_FILTERED_TESTS:
        for name in NOT_IN_TIMM_MODULES:
            # the prune contract prunes a copy at every feature index: minutes per model on a CPU, always slow
            fast = name in DIRECT_FAST and test != "test_prune_intermediate_layers_contract"
            # SwinV2 with 1-px patches at 64 px runs a 64 x 64 token grid: longer than the default 900 s per test
            marks = () if fast else (pytest.mark.slow, pytest.mark.timeout(3 * 3600))
            cases.append(pytest.param(test, name, marks=marks))
    for name in list_lifevit_models():
        if fnmatch.fnmatch(name, helper.NON_STD_EXTRA):
            marks = () if name in DIRECT_FAST else pytest.mark.slow
            cases.append(pytest.param("test_model_default_cfgs_non_std", name, marks=marks))
    return cases


@pytest.fixture(scope="session")
def timm_tests_root() -> Path:
    try:
        return helper.fetch_timm_tests()
    except RuntimeError as err:
        pytest.skip(f"timm's test suite is not available: {err}")


@pytest.fixture(scope="session")
def timm_test_models(timm_tests_root, pytestconfig):
    """timm's ``tests/test_models.py`` imported as a module (its functions, not its parametrizations)."""
    for marker in helper.timm_markers(timm_tests_root):  # its decorators use timm's markers (--strict-markers)
        pytestconfig.addinivalue_line("markers", marker)
    path = timm_tests_root / "tests" / "test_models.py"
    spec = importlib.util.spec_from_file_location("timm_tests_test_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_and_check(models, tmp_path, extra_args=()):
    report = tmp_path / "timm.xml"
    proc = helper.run_timm_tests(
        ["-q", "--tb=short", "-p", "no:warnings", f"--junitxml={report}", *extra_args],
        models=",".join(models),
        capture_output=True,
        text=True,
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert report.is_file(), f"timm's test run wrote no report:\n{tail}"
    cases = ET.parse(report).getroot().iter("testcase")
    results = {}
    for case in cases:
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped: " + child.get("message", "")
        results[case.get("name")] = outcome
    failed = sorted(k for k, v in results.items() if v == "failed")
    assert not failed and proc.returncode == 0, f"timm's tests failed on {failed}:\n{tail}"
    passed = [k for k, v in results.items() if v == "passed"]
    # every selected model ran the forward, backward and FX tests (not skipped by a size limit)
    for name in models:
        for test in ("test_model_forward", "test_model_backward", "test_model_forward_fx", "test_model_backward_fx"):
            assert any(k.startswith(f"{test}[") and k.endswith(f"-{name}]") for k in passed), (test, name, results)
    return results


def test_timm_model_tests_pass_on_cpu_scale_models(timm_tests_root, tmp_path):
    results = _run_and_check(FAST_MODELS, tmp_path)
    # the plain ViT scripts; the LIFE one is excluded (not run at all, not a silent pass)
    assert results["test_model_forward_torchscript[1-vit_lite_patch4_28]"] == "passed"
    assert "test_model_forward_torchscript[1-vit_lite_patch4_28_life]" not in results


@pytest.mark.slow
@pytest.mark.timeout(6 * 3600)
def test_timm_model_tests_pass_on_every_model(timm_tests_root, tmp_path):
    _run_and_check(list_lifevit_models(), tmp_path)


@pytest.mark.parametrize("test_name, model_name", _direct_cases())
def test_timm_test_function_on_lifevit_model(timm_test_models, test_name, model_name):
    fn = getattr(timm_test_models, test_name)
    params = inspect.signature(fn).parameters
    kwargs = {"model_name": model_name}
    if "batch_size" in params:
        kwargs["batch_size"] = 1
    if "cfg_device" in params:
        kwargs["cfg_device"] = "meta"
    fn(**kwargs)
