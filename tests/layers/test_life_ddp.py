"""DistributedDataParallel (2 CPU processes, gloo) takes LIFE's gradients without a layout warning."""

import os
import subprocess
import sys

import pytest

CHILD = r"""
import sys, warnings
import torch, torch.distributed as dist
from torch import nn
from lifevit import LIFE

dist.init_process_group("gloo")
torch.manual_seed(0)
if sys.argv[1] == "life":
    layer = LIFE(24, num_prefix_tokens=1)
    x = torch.randn(2, 1 + 16, 24)
    loss = lambda m: m(x, grid_size=(4, 4)).square().mean()
else:  # control: a depthwise conv on a channels-last map through plain autograd, as LIFE used to run it
    layer = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
    x = torch.randn(2, 24, 4, 4).contiguous(memory_format=torch.channels_last)
    loss = lambda m: m(x).square().mean()
model = nn.parallel.DistributedDataParallel(layer)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(2):
        model.zero_grad()
        loss(model).backward()
for w in caught:
    print("WARNING:", w.message, flush=True)
dist.barrier()  # both ranks done before teardown: gloo aborts a rank whose peer hangs up mid-teardown
dist.destroy_process_group()
"""


def _run(tmp_path, which: str) -> str:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd + [str(script), which], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("which", ["control", "life"])
def test_no_grad_stride_warning_under_ddp(tmp_path, which):
    out = _run(tmp_path, which)
    warned = "grad strides do not match bucket view" in out.lower()
    assert warned == (which == "control"), out[-2000:]  # the control proves the warning would be seen
