"""Errors for bad input: each names the file and the cause in one line."""

from __future__ import annotations

import os


class InputError(Exception):
  """A file that cannot be used: corrupt, truncated, empty, missing a stream, or
  misnamed. `str()` is one line, `<path>: <cause>`, fit for a skip report or CLI."""

  def __init__(self, path: str | os.PathLike | None, cause: str):
    self.path = None if path is None else os.fspath(path)
    self.cause = " ".join(str(cause).split())  # always a single line
    super().__init__(self.path, self.cause)

  def __str__(self) -> str:
    return f"{self.path}: {self.cause}" if self.path else self.cause


class MissingModalityError(InputError):
  """The file is readable but lacks a stream (e.g. an mp4 with no audio track)."""

  def __init__(self, path, modality: str, cause: str | None = None):
    self.modality = modality
    super().__init__(path, cause or f"no {modality} stream")


class ConfigError(ValueError):
  """A mistake in the data config (protocol, fold, k, batch size) that a flag fixes:
  the CLI prints it as one line and exits 2. A ValueError, so callers that caught
  ValueError before keep working."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))
