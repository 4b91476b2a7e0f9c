"""TFDS builders: `ravdess`, `crema_d` and `folder`. Each reads a manual download
directory and writes ArrayRecord files, one config per feature set."""

from input_pipeline.builders.crema_d import CremaD
from input_pipeline.builders.folder import Folder
from input_pipeline.builders.ravdess import Ravdess

BUILDERS = {"ravdess": Ravdess, "crema_d": CremaD, "folder": Folder}
