"""lifevit.runtime: the allocator setting the CLI applies."""

import ctypes.util
import platform

import torch

from lifevit.runtime import keep_freed_memory


def test_keep_freed_memory_applies_on_glibc_and_is_harmless():
    applied = keep_freed_memory()
    assert isinstance(applied, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" and ctypes.util.find_library("c"):
        assert applied
    assert keep_freed_memory() == applied  # calling it twice is fine
    x = torch.randn(256, 1024)  # 1 MiB tensors are allocated and freed as before
    assert torch.equal(x.clone(), x)


def test_cli_applies_it_unless_told_not_to(monkeypatch):
    import lifevit.runtime
    from lifevit.cli import main

    calls = []
    monkeypatch.setattr(lifevit.runtime, "keep_freed_memory", lambda: calls.append(1) or True)
    assert main(["profile", "vit_lite_patch4_28", "--batch-size", "2", "--no-throughput"]) == 0
    assert calls == [1]
    assert main(["--system-allocator", "profile", "vit_lite_patch4_28", "--batch-size", "2", "--no-throughput"]) == 0
    assert calls == [1]
