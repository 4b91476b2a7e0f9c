"""Serving: `export` turns a training workdir into artefacts that need no training
code, `predict` runs one on a user's clip.

`artifact` (loading an export) needs only jax and numpy; `export` is the one
module here that reads checkpoints (through `avjax.train.runtime`, the pieces
the trainer builds runs from). Nothing is imported
at package level, so `avjax predict` never pays for TensorFlow or Orbax.
"""
