"""Native kernels avjax calls through XLA's FFI (`make ops`; `make test` and `make demo` build them)."""
