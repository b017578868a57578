"""benchmarks/gpu_check.py runs end to end on the CPU (tiny shapes), so the GPU script cannot rot."""

import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_mode_prints_the_table_and_runs_the_cli(tmp_path, capsys):
    from lifevit.data.fashion_mnist import write_fashion_mnist

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.arange(40) % 10
    root = write_fashion_mnist(tmp_path / "fmnist", (images, labels), (images[:20], labels[:20]))
    out = tmp_path / "table.md"
    assert _gpu_check().main(["--device", "cpu", "--quick", "--data-root", str(root), "--output", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| deit_tiny")]
    assert len(rows) == 2 and {"train", "infer"} == {r.split("|")[4].strip() for r in rows}
    assert all(float(r.split("|")[8]) > 0 for r in rows)  # a time ratio was measured
    assert "'status': 'ok'" in text
    layer_rows = [line for line in text.splitlines() if line.startswith("| (2, 17, 24)")]
    assert {"train", "infer"} == {r.split("|")[2].strip() for r in layer_rows}
    assert all(float(r.split("|")[5]) > 0 for r in layer_rows)  # a wall ratio was measured (no GPU time on CPU)


def test_cli_row_is_skipped_without_fashion_mnist(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _gpu_check().cli_run("cpu", str(tmp_path / "empty"), quick=True)
    assert result["status"].startswith("skipped: Fashion-MNIST not found")


def test_a_row_that_fails_is_reported_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    module = _gpu_check()
    real = module.measure

    def measure(name, img, batch, mode, *args):
        if mode == "infer" and name.endswith("_life"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore lines")
        return real(name, img, batch, mode, *args)

    monkeypatch.setattr(module, "measure", measure)
    out = tmp_path / "table.md"
    assert module.main(["--device", "cpu", "--quick", "--no-cli", "--output", str(out)]) == 0
    rows = {r.split("|")[4].strip(): r for r in out.read_text().splitlines() if r.startswith("| deit_tiny")}
    assert float(rows["train"].split("|")[8]) > 0  # the training row was measured
    assert "failed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB |" in rows["infer"]
