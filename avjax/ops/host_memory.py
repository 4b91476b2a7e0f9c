"""Keeps freed host memory in the process, so XLA:CPU's per-step buffers are not
page-faulted in again on every step.

Why: XLA:CPU allocates an executable's temporary buffer with malloc at every
execution and frees it at the end (1.14 GB for S1's video net at batch 32).
glibc serves blocks above 32 MB with a fresh mmap and unmaps them on free, so
every step touches 1.14 GB of new pages: 280k page faults and the kernel
zeroing each page, 0.4-0.8 s of system CPU time per 1.9 s step on 2 cores.
TensorFlow avoids this with its own caching allocator on CPU; glibc can be told
to do the same: never mmap (M_MMAP_MAX = 0), never give free memory at the top
of the heap back to the system (M_TRIM_THRESHOLD), and one arena
for all threads (M_ARENA_MAX = 1), because a thread's own arena tops out at
64 MB and falls back to mmap above that. Measured in benchmarks/README.md
(issue 20): the S1 video step went from 1.86-2.19 s to 1.57-1.60 s, with zero
page faults after the first step.

The cost: the process keeps its peak heap instead of returning it to the
system, and threads share one malloc arena. The `avjax` command applies this
at start-up unless AVJAX_KEEP_HOST_MEMORY=0; a notebook can call
`keep_freed_host_memory()` itself, before jax creates its threads (the arena
limit only binds threads that have not allocated yet).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

ENV = "AVJAX_KEEP_HOST_MEMORY"

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int, which glibc stores as a size_t: -1 is "never trim". A
# finite threshold (at most 2 GB as an int) is not enough: when jax dispatches
# the next step before the last one's buffers are freed, two temp buffers are
# live, and freeing both leaves more than 2 GB at the top, trimmed and then
# page-faulted in again.
_TRIM_NEVER = -1

_applied: bool | None = None


def _glibc():
  """glibc's handle, or None on other C libraries (musl, macOS, Windows)."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    libc.gnu_get_libc_version()
  except (OSError, AttributeError):
    return None
  return libc


def keep_freed_host_memory() -> bool:
  """Tells glibc's malloc to reuse freed memory instead of returning it to the
  system. Returns whether it is in effect (False where the C library is not
  glibc, or when AVJAX_KEEP_HOST_MEMORY=0). Idempotent."""
  global _applied
  if _applied is not None:
    return _applied
  if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
    _applied = False
    return _applied
  libc = _glibc()
  if libc is None:
    _applied = False
    return _applied
  ok = all(libc.mallopt(param, value) == 1 for param, value in (
      (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM_NEVER), (_M_ARENA_MAX, 1)))
  if not ok:
    logging.warning("avjax: glibc's mallopt refused a setting; host memory is "
                    "returned to the system as usual")
  _applied = ok
  return _applied
