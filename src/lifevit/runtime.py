"""Process-level settings that make CPU training and inference faster and their timings steadier.

glibc's ``malloc`` hands large blocks back to the operating system as soon as they are freed (it ``mmap``s
every block above a threshold and trims the top of the heap). A PyTorch forward pass frees and re-allocates
tensors of the same sizes in every layer, so each new activation is fresh memory whose pages fault on first
touch. :func:`keep_freed_memory` tells glibc to keep freed memory for re-use instead. This is the same thing
PyTorch's CPU performance guide gets from switching to jemalloc or tcmalloc. Without it, the time of a DeiT-T
forward pass on 2 cores varied by about 15% from run to run here; with it, both the plain and the LIFE model
were 10-25% faster and steady (``docs/performance.md``). The cost: the process keeps its peak heap
instead of returning it, which a training process does in practice anyway.

The ``lifevit`` command calls it at start-up (``lifevit --system-allocator ...`` turns it off); library users
call it themselves if they want it. It changes nothing on systems without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["keep_freed_memory"]

_logger = logging.getLogger(__name__)

# mallopt parameters, from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc refuses larger values on 64-bit systems
_TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes: in practice, never trim the heap
_TOP_PAD = 256 * 1024 * 1024  # grow the heap in 256 MiB steps


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for re-use (no heap trimming, ``mmap`` only above 32 MiB).

    Returns:
        ``True`` if the settings were applied, ``False`` where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        _logger.debug("no mallopt in the C library (%s): allocator settings unchanged", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD), (_M_TOP_PAD, _TOP_PAD))
    ok = all([mallopt(param, value) == 1 for param, value in settings])  # a list: every setting is tried
    _logger.debug("glibc allocator set to keep freed memory: %s", ok)
    return ok
