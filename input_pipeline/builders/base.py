"""What every avjax TFDS builder shares: feature-set configs, the example schema,
per-actor splits, and the parallel per-take feature computation with skip records.

A corpus builder only says how to find *takes* in the manual directory (one take =
one recorded performance, whatever files carry it). Each take becomes one example,
so the audio-only, video-only and audio-video files of a take always travel
together. Splits are per actor (`actor_01`, `actor_02`, ...): an evaluation
protocol is then a union of actor splits, and no split can mix a take's files.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from input_pipeline import clip as clip_lib
from input_pipeline import features as features_lib
from input_pipeline.builders.work import (Skip, Take, compute_example, compute_task,
                                          init_worker, warm_constants)
from input_pipeline.errors import InputError

__all__ = ["AvBuilder", "Discovery", "Skip", "Take", "compute_example"]

log = logging.getLogger(__name__)

MEDIA_EXTENSIONS = (".mp4", ".wav", ".flv", ".avi", ".mov", ".mkv", ".webm", ".m4a", ".mp3")
VIDEO_EXTENSIONS = (".mp4", ".flv", ".avi", ".mov", ".mkv", ".webm")
# Decoding constants live with the shared decode path (input_pipeline/clip.py).
NO_VIDEO = clip_lib.NO_VIDEO
FACE_DETECT_EVERY = clip_lib.FACE_DETECT_EVERY
VIDEO_MAX_SIDE = clip_lib.VIDEO_MAX_SIDE


@dataclasses.dataclass
class Discovery:
  takes: list[Take]
  skipped: list[Skip]          # found but unusable before decoding (bad names, excluded)
  ignored: list[str]           # non-media files, listed but not counted as clips


class FeatureSetConfig(tfds.core.BuilderConfig):
  """A builder config is a feature set: its name and version are the feature set's."""

  def __init__(self, feature_set: features_lib.FeatureSet, **kwargs):
    super().__init__(name=feature_set.name, version=feature_set.version,
                     description=feature_set.description, **kwargs)
    self.feature_set_name = feature_set.name


def feature_set_configs() -> list[FeatureSetConfig]:
  return [FeatureSetConfig(fs) for fs in features_lib.FEATURE_SETS.values()]


def metadata_features(class_names: Sequence[str]) -> dict:
  """The per-example metadata every builder writes. All `Tensor`/`Text`/`ClassLabel`,
  so reading needs no TensorFlow."""
  scalar = lambda dtype: tfds.features.Tensor(shape=(), dtype=dtype)
  return {
      "clip_id": tfds.features.Text(),
      "take_id": tfds.features.Text(),
      "actor": scalar(np.int32),
      "sex": tfds.features.Text(),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "emotion": tfds.features.Text(),
      "intensity": scalar(np.int32),
      "statement": scalar(np.int32),
      "repetition": scalar(np.int32),
      "has_audio": scalar(np.bool_),
      "has_video": scalar(np.bool_),
      "source_files": tfds.features.Text(),
      "face_hit_rate": scalar(np.float32),
      "face_fallback_frames": scalar(np.int32),
      "face_centre_fallback": scalar(np.bool_),
  }


class AvBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the ravdess, crema_d and folder builders."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = feature_set_configs()
  CLASS_NAMES: tuple[str, ...] = ()

  def __init__(self, *, workers: int | None = None, progress: bool = True, **kwargs):
    self._workers = workers or os.cpu_count() or 1
    self._progress = progress
    self._use_beam = False
    self._skip_dir: str | None = None
    self._data_dir_root = kwargs.get("data_dir") or tempfile.gettempdir()
    self.skipped: list[Skip] = []
    self.ignored: list[str] = []
    self.takes: list[Take] = []     # discovered, before decoding
    self.found = 0
    self.prepared = 0
    super().__init__(**kwargs)

  # -- What a corpus builder provides ---------------------------------------------

  def discover(self, manual_dir: str) -> Discovery:
    raise NotImplementedError

  def class_names(self) -> tuple[str, ...]:
    return self.CLASS_NAMES

  # -- TFDS ----------------------------------------------------------------------

  def _info(self) -> tfds.core.DatasetInfo:
    feature_set = features_lib.get_feature_set(self.builder_config.feature_set_name)
    feats = metadata_features(self.class_names())
    for key, (shape, dtype) in feature_set.spec.items():
      feats[key] = tfds.features.Tensor(shape=tuple(shape), dtype=np.dtype(dtype).type)
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict(feats),
        supervised_keys=None, homepage=getattr(self, "HOMEPAGE", None),
        citation=getattr(self, "CITATION", None))

  def _log_download_bytes(self) -> None:
    """Silences TFDS's "Downloading and preparing dataset": avjax downloads
    nothing, and `prepare` prints its own summary."""

  def _log_download_done(self) -> None:
    """Silences TFDS's "Dataset ... downloaded and prepared to": see above."""

  def _download_and_prepare(self, dl_manager, download_config):
    """Notes whether a Beam runner drives this build: `_split_generators` only
    sees the download manager."""
    self._use_beam = bool(download_config.beam_runner or download_config.beam_options)
    try:
      super()._download_and_prepare(dl_manager, download_config)
    except BaseException as e:
      if getattr(self, "_stream", None) is not None:
        self._stream.close()  # Workers stop now, not when the builder is collected.
      if not isinstance(e, Exception):
        raise  # noqa: BLE001 - re-raised, reworded when we know why.
      empty = re.search(r"generated examples is 0 for split (\w+)", str(e))
      if self._use_beam and empty:
        raise InputError(None, f"every take of {empty.group(1)} failed to decode in the "
                               "Beam pipeline, and TFDS cannot write an empty split; "
                               "remove those files, or prepare without a Beam runner "
                               "(the local path drops the split)") from e
      raise
    if self._use_beam:  # What was written, not what was planned: the real check.
      self.prepared = sum(s.num_examples for s in self.info.splits.values())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Declares one split per actor that has at least one example: TFDS cannot
    write an empty split, and an actor whose every take was skipped must simply
    be absent, not break the build. With a Beam runner, the features are computed
    in the pipeline instead (`_beam_split_generators`).

    Locally, features are computed in a pool while TFDS encodes and writes
    (`ExampleStream`): the first take of every actor goes first, which settles
    which actors get a split, then the rest in actor order, so each split's
    generator finds its examples as they arrive instead of after the last clip."""
    manual_dir = os.fspath(dl_manager.manual_dir)
    check_manual_dir(manual_dir)
    found = self.discover(manual_dir)
    self.takes = list(found.takes)
    self.skipped.extend(found.skipped)
    self.ignored.extend(found.ignored)
    self.found = len(found.takes) + len(found.skipped)
    if not found.takes:
      raise InputError(manual_dir, f"no usable clips found for {self.name} "
                                   f"({len(found.skipped)} skipped)")
    if self._use_beam:
      return self._beam_split_generators(manual_dir, found.takes)
    os.makedirs(os.fspath(self._data_dir_root), exist_ok=True)
    feature_set_name = self.builder_config.feature_set_name
    self._stream = ExampleStream(
        self, found.takes, feature_set_name, self._workers,
        scratch_root=os.fspath(self._data_dir_root),
        desc=f"{self.name}/{self.builder_config.name} features", progress=self._progress)
    actors = self._stream.settle()
    if not actors:
      self._stream.close()
      raise InputError(manual_dir, f"every clip was skipped ({len(self.skipped)})")
    return {split_name(actor): self._generate_examples(actor) for actor in actors}

  def _generate_examples(self, actor: int) -> Iterator[tuple[str, dict]]:
    """One actor's (take id, example) pairs, as the pool computes them."""
    return self._stream.examples(actor)

  # -- The Beam path ---------------------------------------------------------------

  def _beam_split_generators(self, manual_dir: str, takes: Sequence[Take]) -> dict:
    """Declares the actor splits and hands each its takes; nothing is decoded here.

    TFDS cannot write an empty split, and which actors end up with examples is
    only known once the pipeline ran. So every take is first probed (ffmpeg reads
    the container header: milliseconds, not a decode): a take whose needed media
    is missing or unreadable is skipped here, and only actors with a take left get
    a split. Residual case: a take that probes fine but fails to decode (e.g. an
    audio stream with no samples) is skipped in the pipeline; if that happens to
    every take of an actor, TFDS fails that split and `_download_and_prepare`
    says why; nothing reads as complete, and the local path handles that corpus.
    """
    feature_set_name = self.builder_config.feature_set_name
    modalities = features_lib.get_feature_set(feature_set_name).modalities
    ordered = sorted(takes, key=lambda t: (t.actor, t.take_id))
    with concurrent.futures.ThreadPoolExecutor(max(1, 4 * self._workers)) as pool:
      probed = list(pool.map(lambda t: probe_take(t, modalities), ordered))
    by_actor: dict[int, list[Take]] = {}
    for take, skip in zip(ordered, probed):
      if skip is not None:
        log.warning("skipping %s: %s", skip.where(), skip.reason)
        self.skipped.append(skip)
      else:
        by_actor.setdefault(take.actor, []).append(take)
    if not by_actor:
      raise InputError(manual_dir, f"every clip was skipped ({len(self.skipped)})")
    # The workers write the pipeline's skip records here, one JSON line each;
    # `_process_pipeline_result` reads them back once the pipeline has run.
    self._skip_dir = os.path.join(
        os.fspath(self._data_dir_root),
        f"{CACHE_PREFIX}{os.getpid()}-beam-{uuid.uuid4().hex[:8]}")
    return {split_name(actor): self._generate_examples_beam(
                actor_takes, feature_set_name, self._skip_dir + "/" + split_name(actor))
            for actor, actor_takes in sorted(by_actor.items())}

  def _generate_examples_beam(self, takes: Sequence[Take], feature_set_name: str,
                              skip_prefix: str):
    """One split as a Beam PTransform: takes -> (key, example), skips to JSON lines."""
    return beam_examples(list(takes), feature_set_name, skip_prefix)

  def _process_pipeline_result(self, pipeline_result) -> None:
    """Collects the pipeline's skip records, so the report stays complete."""
    for record in read_skip_records(self._skip_dir) if self._skip_dir else []:
      skip = Skip(tuple(record["files"]), record["reason"], record.get("take"),
                  record.get("path"))
      log.warning("skipping %s: %s", skip.where(), skip.reason)
      self.skipped.append(skip)

  def cleanup(self) -> None:
    stream = getattr(self, "_stream", None)
    if stream is not None:
      stream.close()
      self._stream = None
    if getattr(self, "_skip_dir", None):
      _delete_tree(self._skip_dir)
      self._skip_dir = None


CACHE_PREFIX = ".avjax-prepare-cache-"


# One BLAS/OpenMP/OpenCV thread per worker: the pool already runs one process per
# core, and nested thread pools only fight over the same cores.
_SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                      "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


@contextlib.contextmanager
def _pool(workers: int, constants: dict | None = None):
  """Spawned workers (forking a process that may hold jax/TF threads is unsafe),
  each single-threaded. The environment is set around the spawn, because BLAS
  reads it once, when numpy is first imported in the child. Workers import
  `input_pipeline.builders.work` (no TFDS) to run their tasks."""
  if workers <= 1:
    yield None
    return
  saved = {k: os.environ.get(k) for k in _SINGLE_THREAD_ENV}
  os.environ.update(_SINGLE_THREAD_ENV)
  try:
    pool = multiprocessing.get_context("spawn").Pool(workers, initializer=init_worker,
                                                     initargs=(constants,))
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  try:
    yield pool
  finally:
    pool.terminate()
    pool.join()


def worker_count(requested: int, num_tasks: int, modalities: Sequence[str]) -> int:
  """Workers worth starting: each costs about a second of imports, which only
  pays off with enough work per worker (audio features take milliseconds per
  clip, video features with face tracking about a second)."""
  per_worker = 4 if "video" in modalities else 200
  return max(1, min(requested, -(-num_tasks // per_worker)))


def _in_order(pool, fn, tasks: Sequence, window: int) -> Iterator:
  """fn over tasks, results in task order, at most `window` tasks in flight, so
  that finished examples never pile up in memory ahead of the writer."""
  if pool is None:
    for task in tasks:
      yield fn(task)
    return
  pending = collections.deque()
  todo = iter(tasks)
  for task in itertools.islice(todo, window):
    pending.append(pool.apply_async(fn, (task,)))
  while pending:
    result = pending.popleft().get()
    for task in itertools.islice(todo, 1):
      pending.append(pool.apply_async(fn, (task,)))
    yield result


class ExampleStream:
  """Computes every take's example in a pool and hands them to the actor splits'
  generators as they arrive, while TFDS encodes and writes in this process.

  Order of work: the first take of each actor, then every other take by (actor,
  take). `settle()` takes results until every actor has an example or has run
  out of takes (normally just the first round), which is what TFDS needs before
  any writing: the list of non-empty splits. `examples(actor)` then yields that
  actor's examples; the results it pulls are, in the normal order, its own. A
  result that arrives for another actor (an actor whose first takes failed,
  or a split generator run out of order) waits in a scratch pickle beside the
  data, so memory holds at most one example per actor plus the pool's window.
  Skips go to the builder's report as they arrive; `prepared` counts the
  examples handed to TFDS."""

  def __init__(self, builder: "AvBuilder", takes: Sequence[Take], feature_set_name: str,
               workers: int, *, scratch_root: str, desc: str, progress: bool):
    self._builder = builder
    self._by_actor: dict[int, list[Take]] = {}
    for take in sorted(takes, key=lambda t: (t.actor, t.take_id)):
      self._by_actor.setdefault(take.actor, []).append(take)
    self._order = ([ts[0] for ts in self._by_actor.values()]
                   + [t for ts in self._by_actor.values() for t in ts[1:]])
    self._left = {actor: len(ts) for actor, ts in self._by_actor.items()}
    self._ready: dict[int, collections.deque] = {a: collections.deque() for a in self._by_actor}
    self._has_example: set[int] = set()
    self._scratch_root = scratch_root
    self._scratch: str | None = None
    modalities = features_lib.get_feature_set(feature_set_name).modalities
    n = worker_count(workers, len(self._order), modalities)
    self._exit = contextlib.ExitStack()
    pool = self._exit.enter_context(
        _pool(n, warm_constants(feature_set_name) if n > 1 else None))
    self._results = _in_order(pool, compute_task,
                              [(i, t, feature_set_name) for i, t in enumerate(self._order)],
                              window=4 * n)
    self._bar = self._exit.enter_context(
        tqdm.tqdm(total=len(self._order), unit="clip", desc=desc, disable=not progress))
    self._closed = False

  def settle(self) -> list[int]:
    """The actors that have at least one example, in order."""
    for actor in self._by_actor:
      while actor not in self._has_example and self._left[actor]:
        self._pull(for_actor=None)
    return [a for a in self._by_actor if a in self._has_example]

  def examples(self, actor: int) -> Iterator[tuple[str, dict]]:
    ready = self._ready[actor]
    while ready or self._left[actor]:
      if not ready:
        self._pull(for_actor=actor)
        continue
      key, item = ready.popleft()
      if isinstance(item, str):  # Spilled: read back and drop the scratch file.
        path = item
        with open(path, "rb") as f:
          item = pickle.load(f)
        os.remove(path)
      self._builder.prepared += 1
      yield key, item
    if not any(self._left.values()) and not any(self._ready.values()):
      self.close()  # Every result is in: the workers can go.

  def _pull(self, for_actor: int | None) -> None:
    index, result = next(self._results)
    take = self._order[index]
    self._left[take.actor] -= 1
    self._bar.update()
    if isinstance(result, Skip):
      log.warning("skipping %s: %s", result.where(), result.reason)
      self._builder.skipped.append(result)
      return
    first = take.actor not in self._has_example
    self._has_example.add(take.actor)
    keep = take.actor == for_actor or (for_actor is None and first)
    self._ready[take.actor].append((take.take_id, result if keep else self._spill(take, result)))

  def _spill(self, take: Take, example: dict) -> str:
    if self._scratch is None:
      self._scratch = tempfile.mkdtemp(prefix=f"{CACHE_PREFIX}{os.getpid()}-",
                                       dir=self._scratch_root)
    path = os.path.join(self._scratch,
                        f"{hashlib.sha1(take.take_id.encode()).hexdigest()}.pkl")
    with open(path, "wb") as f:
      pickle.dump(example, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path

  def close(self) -> None:
    """Stops the pool and removes the scratch files; safe to call twice."""
    if self._closed:
      return
    self._closed = True
    self._exit.close()
    if self._scratch:
      shutil.rmtree(self._scratch, ignore_errors=True)


def check_manual_dir(manual_dir: str) -> None:
  """The manual download directory must be one: a file or a typo says which."""
  if not os.path.isdir(manual_dir):
    raise InputError(manual_dir, "manual directory is a file, not a directory"
                     if os.path.exists(manual_dir) else "manual directory does not exist")


def probe_take(take: Take, modalities: Sequence[str]) -> Skip | None:
  """Cheap up-front check for the Beam path: the needed files exist and carry the
  needed streams. None when the take may go to the pipeline."""
  from input_pipeline import media
  from input_pipeline.errors import MissingModalityError
  try:
    if "audio" in modalities:
      if take.audio_file is None:
        raise InputError(take.video_file or take.take_id, "no audio file for this take")
      if not media.probe(take.audio_file).has_audio:
        raise MissingModalityError(take.audio_file, "audio")
    if "video" in modalities:
      if take.video_file is None:
        raise InputError(take.audio_file or take.take_id, "no video file for this take")
      if not media.probe(take.video_file).has_video:
        raise MissingModalityError(take.video_file, "video")
  except InputError as e:
    return Skip(take.files, e.cause if e.path else str(e), take.take_id, e.path)
  return None


SKIPPED_TAG = "skipped"


def beam_examples(takes: list[Take], feature_set_name: str, skip_prefix: str):
  """`Create(takes) | compute`, as a PTransform TFDS applies to its pipeline: the
  examples are its output; skips are counted and written as JSON lines."""
  import apache_beam as beam

  @beam.ptransform_fn
  def _examples(root):
    split = os.path.basename(skip_prefix)
    results = (root
               | "Takes" >> beam.Create(takes)
               | "Compute" >> beam.FlatMap(_compute_tagged, feature_set_name, split)
               .with_outputs(SKIPPED_TAG, main="examples"))
    _ = (results[SKIPPED_TAG]
         | "WriteSkips" >> beam.io.WriteToText(skip_prefix, file_name_suffix=".jsonl"))
    return results.examples

  return _examples()  # pylint: disable=no-value-for-parameter


def _compute_tagged(take: Take, feature_set_name: str, split: str):
  """Runs on a Beam worker: an example, or a tagged skip record."""
  from apache_beam import pvalue
  key, result = compute_example(take, feature_set_name)
  if isinstance(result, Skip):
    tfds.beam.inc_counter("skipped", namespace="avjax")
    yield pvalue.TaggedOutput(SKIPPED_TAG, json.dumps(
        {"files": list(result.files), "take": result.take_id, "reason": result.reason,
         "path": result.path, "split": split}))
  else:
    tfds.beam.inc_counter("prepared", namespace="avjax")
    yield key, result


def read_skip_records(skip_dir: str) -> list[dict]:
  """The pipeline's skip records, through Beam's filesystems (local or gs://)."""
  from apache_beam.io.filesystems import FileSystems
  records = []
  for match in FileSystems.match([skip_dir + "/*.jsonl"]):
    for meta in sorted(match.metadata_list, key=lambda m: m.path):
      with FileSystems.open(meta.path) as f:
        records.extend(json.loads(line) for line in f.read().decode().splitlines()
                       if line.strip())
  return records


def _delete_tree(path: str) -> None:
  if "://" not in path:
    shutil.rmtree(path, ignore_errors=True)
    return
  from apache_beam.io.filesystems import FileSystems
  with contextlib.suppress(Exception):  # Scratch only: a leftover costs bytes, not data.
    FileSystems.delete([path])


def split_name(actor: int) -> str:
  return f"actor_{int(actor):02d}" if actor < 100 else f"actor_{int(actor)}"


def actor_of_split(name: str) -> int:
  return int(name.split("_", 1)[1])


def scan_media(manual_dir: str, parse: Callable[[str], Any], skipped: list[Skip],
               ignored: list[str]) -> Iterator[tuple[str, str, Any]]:
  """Yields (path, extension, parsed name) for every media file under `manual_dir`.
  Files whose name `parse` rejects go to `skipped` with its reason; files that
  are not media at all go to `ignored`, so the report accounts for both."""
  for path in walk_files(manual_dir):
    ext = os.path.splitext(path)[1].lower()
    if ext not in MEDIA_EXTENSIONS:
      ignored.append(path)
      continue
    try:
      yield path, ext, parse(path)
    except InputError as e:
      skipped.append(Skip((path,), e.cause))


def add_file(files: dict, kind, path: str, skipped: list[Skip]) -> None:
  """Records `path` as the take's `kind` file; a second one is a reported duplicate."""
  if kind in files:
    skipped.append(Skip((path,), f"duplicate of {files[kind]}"))
  else:
    files[kind] = path


def walk_files(root: str) -> list[str]:
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for f in sorted(filenames):
      if not f.startswith("."):
        out.append(os.path.join(dirpath, f))
  return out
