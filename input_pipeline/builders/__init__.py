"""TFDS builders: `ravdess`, `crema_d` and `folder`. Each reads a manual download
directory and writes ArrayRecord files, one config per feature set.

The builders load on first use (PEP 562): `prepare`'s worker processes import
`input_pipeline.builders.work` only, without TensorFlow Datasets.
"""

from __future__ import annotations

import importlib

_BUILDER_CLASSES = {"ravdess": ("ravdess", "Ravdess"), "crema_d": ("crema_d", "CremaD"),
                    "folder": ("folder", "Folder")}


def __getattr__(name: str):
  if name == "BUILDERS":
    builders = {key: getattr(importlib.import_module(f"{__name__}.{module}"), cls)
                for key, (module, cls) in _BUILDER_CLASSES.items()}
    globals()["BUILDERS"] = builders
    return builders
  for module, cls in _BUILDER_CLASSES.values():
    if name == cls:
      return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BUILDERS", "CremaD", "Folder", "Ravdess"]
