"""Loading experiment configs by path, `experiments/NAME.py[:ARGS]`, with
`KEY=VALUE` overrides.

Configs are data: the library never imports `experiments/`; it loads a config file
by path and calls its `get_config(arg)`. Overrides are type-checked against the
existing field, and an unknown key is a one-line `UserError`, because a typo in a
launch command must not silently train the default.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from avjax.errors import UserError


def split_spec(spec: str) -> tuple[str, str | None]:
  """`experiments/foo.py:audio,smoke` -> ('experiments/foo.py', 'audio,smoke')."""
  path, sep, arg = spec.partition(":")
  return path, (arg if sep else None)


def _import_file(path: str):
  if not os.path.isfile(path):
    raise UserError(f"{path}: config file not found")
  name = "avjax_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  # Config files may import siblings (experiments/_base.py): their folder is on
  # the path while the file loads, and only then.
  folder = os.path.dirname(os.path.abspath(path))
  sys.path.insert(0, folder)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # A broken config file is a user error, named as such.
    raise UserError(f"{path}: cannot import config: {type(e).__name__}: {e}") from e
  finally:
    sys.path.remove(folder)
  return module


def _parse_value(text: str, current: Any, key: str) -> Any:
  """Parses `text` into the type of the field it replaces."""
  if isinstance(current, bool):
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise UserError(f"config.{key}: expected a boolean, got {text!r}")
  if isinstance(current, str) or current is None and not _looks_literal(text):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:
      return text
    raise UserError(f"config.{key}: cannot parse {text!r} as {type(current).__name__}") from None
  if current is None:
    return value
  if isinstance(current, float) and isinstance(value, int):
    return float(value)
  if isinstance(current, (tuple, list)) and isinstance(value, (tuple, list)):
    return type(current)(value)
  if isinstance(current, int) and isinstance(value, int):
    return value
  if type(value) is not type(current):
    raise UserError(f"config.{key}: expected {type(current).__name__}, got {text!r}")
  return value


def _looks_literal(text: str) -> bool:
  try:
    ast.literal_eval(text)
    return True
  except (ValueError, SyntaxError):
    return False


def _known(node: ml_collections.ConfigDict) -> str:
  """The keys a typo could have meant, at the level where it was made."""
  return ", ".join(sorted(node.keys()))


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
  """Applies one `a.b.c=value` override in place."""
  key, sep, text = assignment.partition("=")
  key = key.strip()
  if key.startswith("--"):
    key = key[2:]
  if key.startswith("config."):
    key = key[len("config."):]
  if not sep or not key:
    raise UserError(f"override {assignment!r}: expected KEY=VALUE")
  node = config
  parts = key.split(".")
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      raise UserError(f"config.{key}: unknown key {'.'.join(parts[:i + 1])!r} "
                      f"(known: {_known(node)})")
    node = node[part]
    if not isinstance(node, ml_collections.ConfigDict):
      raise UserError(f"config.{key}: {'.'.join(parts[:i + 1])!r} is not a section")
  leaf = parts[-1]
  if leaf not in node:
    raise UserError(f"config.{key}: unknown key {leaf!r} (known: {_known(node)})")
  current = node[leaf]
  if isinstance(current, ml_collections.ConfigDict):
    raise UserError(f"config.{key}: is a section; set one of its fields instead")
  with node.ignore_type():
    node[leaf] = _parse_value(text, current, key)


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `experiments/NAME.py[:ARGS]` and applies `KEY=VALUE` overrides."""
  path, arg = split_spec(spec)
  module = _import_file(path)
  if not hasattr(module, "get_config"):
    raise UserError(f"{path}: config file has no get_config(arg) function")
  try:
    config = module.get_config(arg) if arg is not None else module.get_config(None)
  except UserError:
    raise
  except (ValueError, KeyError) as e:
    raise UserError(f"{path}: bad config argument {arg!r}: {e}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{path}: get_config must return an ml_collections.ConfigDict")
  for assignment in overrides:
    apply_override(config, assignment)
  with config.unlocked():
    config.config_spec = spec  # Recorded so reports and `evaluate` can name the run.
  return config


def parse_args_list(arg: str | None) -> list[str]:
  """Splits a config ARGS string, `audio,smoke` -> ['audio', 'smoke']."""
  return [a.strip() for a in (arg or "").split(",") if a.strip()]


if __name__ == "__main__":  # Print a resolved config: python -m avjax.configs SPEC [K=V...]
  print(load_config(sys.argv[1], sys.argv[2:]))
