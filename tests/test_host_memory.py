"""avjax.ops.host_memory: freed blocks are reused, not page-faulted in again.

Each case runs in a fresh interpreter: mallopt settings are process-wide and
the arena limit only binds threads that have not allocated yet."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from avjax.ops import host_memory

_PROBE = r"""
import ctypes, resource, sys
from avjax.ops import host_memory
applied = host_memory.keep_freed_host_memory() if sys.argv[1] == "keep" else False
# Plain malloc/free, as XLA:CPU allocates (numpy would ask for huge pages).
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
n = 256 << 20  # Far above glibc's 32 MB mmap threshold.
faults = []
for _ in range(4):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = libc.malloc(n)
  ctypes.memset(block, 1, n)  # Touch every page.
  libc.free(block)
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(int(applied), *faults)
"""

PAGES = (256 << 20) // 4096


def _probe(mode: str, **env) -> tuple[bool, list[int]]:
  out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True,
                       text=True, check=True, env={**os.environ, **env}).stdout.split()
  return bool(int(out[0])), [int(v) for v in out[1:]]


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's mallopt only")
def test_freed_memory_is_reused_without_new_page_faults():
  applied, faults = _probe("keep")
  assert applied
  # The first use maps the pages (4 KB or 2 MB ones) ...
  assert faults[0] >= PAGES * 4096 // (2 << 20), faults
  assert all(f < faults[0] // 10 for f in faults[1:]), faults  # ... later ones reuse them.


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc's mallopt only")
def test_without_it_every_allocation_faults_its_pages_again():
  """The control: the probe can tell the two behaviours apart."""
  applied, faults = _probe("default")
  assert not applied
  assert faults[0] >= PAGES * 4096 // (2 << 20), faults
  assert all(f >= faults[0] // 2 for f in faults[1:]), faults


def test_opt_out_by_environment():
  applied, faults = _probe("keep", AVJAX_KEEP_HOST_MEMORY="0")
  assert not applied
  if host_memory._glibc() is not None:
    assert all(f >= faults[0] // 2 for f in faults[1:]), faults
