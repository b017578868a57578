"""LIFE under torch.export, ONNX (onnxruntime, optional) and torch.compile (slow) matches eager."""

import pytest
import torch

from lifevit import LIFE


def _layer():
    torch.manual_seed(0)
    m = LIFE(24, num_prefix_tokens=1, grid_size=(4, 4))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return m, torch.randn(2, 17, 24)


def test_torch_export_matches_eager():
    m, x = _layer()
    program = torch.export.export(m, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), m(x))


def test_onnx_export_matches_eager(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    m, x = _layer()
    path = tmp_path / "life.onnx"
    torch.onnx.export(m.eval(), (x,), str(path), dynamo=True)
    (out,) = ort.InferenceSession(str(path)).run(
        None, {ort.InferenceSession(str(path)).get_inputs()[0].name: x.numpy()}
    )
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), m(x), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compiled_forward_and_gradients_match_eager():
    m, x = _layer()
    x = x.requires_grad_()
    eager = m(x)
    g = torch.randn_like(eager)
    eager_grads = torch.autograd.grad(eager, [x, *m.parameters()], g)
    compiled = torch.compile(m)(x)
    compiled_grads = torch.autograd.grad(compiled, [x, *m.parameters()], g)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_exported_program_uses_only_pytorch_operators():
    """Exported programs (and ONNX) must not depend on lifevit's own operators."""
    m, x = _layer()
    program = torch.export.export(m, (x,))
    targets = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [t for t in targets if "lifevit" in t], targets
    assert "aten.conv2d.default" in targets


def test_compiled_graph_is_whole_and_calls_the_native_kernel():
    """torch.compile traces LIFE into one graph; on CPU with the native kernel built, its depthwise convolutions are
    calls of ``lifevit::dwconv`` (differentiable), not PyTorch's convolutions."""
    from lifevit.layers.dwconv import native_status

    graphs = []

    def record(gm, example_inputs):  # a backend that keeps the traced graph and runs it as it is
        graphs.append(gm)
        return gm.forward

    m, x = _layer()
    x = x.requires_grad_()
    torch._dynamo.reset()
    out = torch.compile(m, backend=record, fullgraph=True)(x)
    out.backward(torch.randn_like(out))
    assert len(graphs) == 1
    targets = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    if native_status().startswith("native"):
        assert targets.count(torch.ops.lifevit.dwconv.default) == len(m.kernel_sizes)
    assert x.grad is not None and all(p.grad is not None for p in m.parameters())
