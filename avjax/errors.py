"""User-facing errors: the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class UserError(Exception):
  """A mistake the user can fix (bad flag, missing directory, wrong config key)."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))
