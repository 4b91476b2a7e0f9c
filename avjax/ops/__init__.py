"""Native kernels avjax calls through XLA's FFI (built by `make venv`)."""
