"""The `avjax` command line: thin argument parsing over library functions.

Every subcommand calls one library function, so tests and notebooks can do the
same without a shell. Heavy imports (jax, TensorFlow) happen inside the handlers,
which keeps `--help` instant. A user error prints one line, `avjax: error: ...`,
and exits 2; the traceback appears only with `--verbose`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Iterator, Sequence

from avjax.errors import UserError

PROG = "avjax"
DATASETS = ("ravdess", "crema_d", "folder")

# Exit codes: 0 ok, 1 internal failure, 2 user error (bad flag, bad input).
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1


def _cmd_synth(args: argparse.Namespace) -> int:
  from input_pipeline.synth import generate_corpus
  try:
    report = generate_corpus(args.out, actors=args.actors,
                             clips_per_emotion=args.clips_per_emotion, seed=args.seed,
                             difficulty=args.difficulty, workers=args.workers,
                             progress=not args.quiet)
  except ValueError as e:
    raise UserError(str(e)) from e
  print(f"wrote {report.n_clips} clips ({len(report.files)} files) to {report.out_dir} "
        f"in {report.seconds:.1f} s")
  return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
  from input_pipeline import prepare
  report = prepare.prepare(dataset=args.dataset, manual_dir=args.manual_dir,
                           data_dir=args.data_dir, feature_set=args.features,
                           workers=args.workers, progress=not args.quiet,
                           beam_runner=args.beam_runner, beam_options=args.beam_option)
  print(report.summary())
  return 0


def _load_config(args: argparse.Namespace):
  from avjax.configs import load_config
  return load_config(args.config, args.overrides)


def _cmd_train(args: argparse.Namespace) -> int:
  config = _load_config(args)
  from avjax.train import train_and_evaluate
  metrics = train_and_evaluate(config, args.workdir)
  if metrics:
    print(" ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())
                   if isinstance(v, (int, float))))
  return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
  from avjax.train.evaluate import evaluate_workdir
  report = evaluate_workdir(args.workdir)
  for path in report.get("files", []):
    print(path)
  return 0


def _cmd_cv(args: argparse.Namespace) -> int:
  config = _load_config(args)
  from avjax.train.cross_validation import cross_validate
  result = cross_validate(config, args.workdir, folds=args.folds)
  print(result.get("markdown", ""))
  return 0


def _cmd_results(args: argparse.Namespace) -> int:
  from avjax.train.results import run_results
  protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
  bad = [p for p in protocols if p not in ("actor", "leaky")]
  if bad or not protocols:
    raise UserError(f"--protocols: expected a comma list of actor and leaky, got {args.protocols!r}")
  folds = [int(f) for f in args.folds.split(",") if f.strip()] if args.folds else None
  table = run_results(args.configs, args.workdir, args.overrides, protocols, folds)
  print(table["markdown"])
  return 0


def _cmd_export(args: argparse.Namespace) -> int:
  from avjax.serving.export import export_workdir
  report = export_workdir(args.workdir, args.out, step=args.step,
                          savedmodel=not args.no_savedmodel)
  print(f"exported step {report.metadata.get('checkpoint_step')} of "
        f"{report.metadata['model']} to {report.out}")
  for path in report.files:
    print(path)
  return 0


def _cmd_predict(args: argparse.Namespace) -> int:
  from avjax.serving.predict import predict_file, summary_lines
  result = predict_file(args.file, args.model, window=args.window, hop=args.hop,
                        batch_size=args.batch_size, json_path=args.json,
                        plot_path=args.plot)
  for line in summary_lines(result):
    print(line)
  return 0


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not value > 0:
    raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
  return value


def _cmd_demo(args: argparse.Namespace) -> int:
  from avjax.demo import run_demo
  summary = run_demo(args.workdir, actors=args.actors,
                     clips_per_emotion=args.clips_per_emotion, seed=args.seed,
                     verbose=args.verbose)
  return 0 if summary.ok else EXIT_FAILURE


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
  return value


def _non_negative_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if value < 0:
    raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
  return value


class _Parser(argparse.ArgumentParser):
  """argparse that reports errors as one line and exit code 2, like UserError."""

  def error(self, message: str):
    raise UserError(f"{self.prog}: {message}")


_VERBOSE_HELP = "show tracebacks, debug logs and TensorFlow's start-up lines"


class _SubParser(_Parser):
  """A subcommand's parser: also takes --verbose/-v, so it works after the
  subcommand too. SUPPRESS keeps an earlier `avjax -v CMD` from being reset."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                      help=_VERBOSE_HELP)


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog=PROG, description="Audio-visual emotion recognition in JAX.")
  parser.add_argument("--verbose", "-v", action="store_true", help=_VERBOSE_HELP)
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubParser)
  sub.required = True

  p = sub.add_parser("synth", help="write the synthetic audio-visual corpus (RAVDESS layout)")
  p.add_argument("--out", required=True, help="output directory (Actor_XX/ folders)")
  p.add_argument("--actors", type=_positive_int, default=24, help="number of actors (1-24)")
  p.add_argument("--clips-per-emotion", type=_positive_int, default=8,
                 help="clips per emotion and actor (8 = RAVDESS's 60 clips per actor)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--difficulty", type=_non_negative_float, default=1.0,
                 help="how subtle the emotion cues are (higher is harder)")
  p.add_argument("--workers", type=_positive_int, default=None,
                 help="worker processes (default: all cores)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(handler=_cmd_synth)

  p = sub.add_parser("prepare", help="precompute a feature set into TFDS ArrayRecord files")
  p.add_argument("--dataset", required=True, choices=DATASETS)
  p.add_argument("--manual-dir", required=True,
                 help="where the corpus lies (as distributed, or a synth output)")
  p.add_argument("--data-dir", required=True, help="TFDS data directory to write")
  p.add_argument("--features", required=True, help="feature set name, e.g. mfcc")
  p.add_argument("--workers", type=_positive_int, default=None,
                 help="worker processes (default: all cores)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--beam-runner", default=None, metavar="NAME",
                 help="compute features in an Apache Beam pipeline on this runner "
                      "(DirectRunner, DataflowRunner, SparkRunner, FlinkRunner, ...) "
                      "instead of the local process pool")
  p.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                 help="a Beam pipeline option, e.g. project=my-proj (a boolean "
                      "option is just its KEY); repeatable")
  p.set_defaults(handler=_cmd_prepare)

  for name, handler, text in (
      ("train", _cmd_train, "train one config into a workdir (resumes if present)"),
      ("cv", _cmd_cv, "run every fold of the config's protocol; mean ± std")):
    p = sub.add_parser(name, help=text,
                       epilog="Override any config field with --config.KEY=VALUE.")
    p.add_argument("--config", required=True, help="experiments/NAME.py[:ARGS]")
    p.add_argument("--workdir", required=True)
    if name == "cv":
      p.add_argument("--folds", default=None,
                     help="comma-separated fold indices (default: all folds)")
    p.set_defaults(handler=handler)

  p = sub.add_parser(
      "results", help="the results table: several configs, actor folds and the leaky split",
      epilog="Override a field of every config with --config.KEY=VALUE (e.g. "
             "--config.data.data_dir=DIR).")
  p.add_argument("--configs", required=True, nargs="+", help="experiments/NAME.py[:ARGS] ...")
  p.add_argument("--workdir", required=True)
  p.add_argument("--protocols", default="actor,leaky",
                 help="comma list of actor (the config's actor-independent folds) and "
                      "leaky (the random clip split, labelled LEAKY)")
  p.add_argument("--folds", default=None,
                 help="comma-separated fold indices of the actor protocol (default: all)")
  p.set_defaults(handler=_cmd_results)

  p = sub.add_parser("evaluate", help="write report.json and figures for a trained workdir")
  p.add_argument("--workdir", required=True)
  p.set_defaults(handler=_cmd_evaluate)

  p = sub.add_parser("export", help="export a trained model (jax.export + TF SavedModel)")
  p.add_argument("--workdir", required=True, help="a training workdir")
  p.add_argument("--out", required=True, help="new directory for the artefacts")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step (default: the best by the run's metric)")
  p.add_argument("--no-savedmodel", action="store_true",
                 help="write only the jax.export artefact (no TensorFlow needed)")
  p.set_defaults(handler=_cmd_export)

  p = sub.add_parser("predict", help="predict emotions over time in your own clip")
  p.add_argument("file", help="mp4, flv, avi, mov or wav")
  p.add_argument("--model", required=True,
                 help="an export directory (avjax export), or a training workdir")
  p.add_argument("--window", type=_positive_float, default=None,
                 help="window length in seconds (default: the span the model's "
                      "features cover, e.g. 3.6 for mfcc)")
  p.add_argument("--hop", type=_positive_float, default=1.0,
                 help="hop between windows in seconds")
  p.add_argument("--batch-size", type=_positive_int, default=16,
                 help="windows per model call")
  p.add_argument("--json", default=None, help="write per-window probabilities here")
  p.add_argument("--plot", default=None, help="write a timeline PNG here")
  p.set_defaults(handler=_cmd_predict)

  p = sub.add_parser("demo", help="synth -> prepare -> train -> evaluate -> export -> predict")
  p.add_argument("--workdir", required=True)
  p.add_argument("--actors", type=_positive_int, default=8)
  p.add_argument("--clips-per-emotion", type=_positive_int, default=4)
  p.add_argument("--seed", type=int, default=0)
  p.set_defaults(handler=_cmd_demo)
  return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  """Parses argv; `--config.KEY=VALUE` (or `--config.KEY VALUE`) become overrides."""
  parser = build_parser()
  args, unknown = parser.parse_known_args(list(argv))
  overrides, stray = [], []
  i = 0
  while i < len(unknown):
    token = unknown[i]
    if token.startswith("--config."):
      if "=" not in token and i + 1 < len(unknown) and not unknown[i + 1].startswith("--"):
        token = f"{token}={unknown[i + 1]}"
        i += 1
      overrides.append(token[2:])
    else:
      stray.append(token)
    i += 1
  if overrides and args.command not in ("train", "cv", "results"):
    raise UserError(f"{PROG} {args.command}: --config.KEY overrides apply only to train, "
                    "cv and results")
  if stray:
    raise UserError(f"{PROG} {args.command}: unrecognized arguments: {' '.join(stray)}")
  args.overrides = overrides
  return args


# --- TensorFlow's start-up lines -------------------------------------------------
#
# TensorFlow 2.21 logs "oneDNN custom operations are on" (port.cc) through absl's
# C++ LOG from the static initialisers of two of its shared objects, each with its
# own copy of absl, so it appears twice, each time after absl's "All log messages
# before absl::InitializeLog() ..." notice. absl writes those to fd 2 whatever
# TF_CPP_MIN_LOG_LEVEL says: that variable only filters TensorFlow's own logging
# (it does silence the cpu_feature_guard line). So while `import tensorflow` runs,
# fd 2 goes to a file, and all but these lines are written back afterwards.
# oneDNN itself stays on (TF_ENABLE_ONEDNN_OPTS would change numerics).
_TF_STARTUP_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written "
    r"to STDERR$|^I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on")


@contextlib.contextmanager
def _filtered_stderr_fd() -> Iterator[None]:
  """fd 2 into a temporary file; afterwards its lines, less TF's start-up noise."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
              if not _TF_STARTUP_NOISE.match(line)]
      if kept:
        os.write(2, "".join(kept).encode())


class _QuietLoader(importlib.abc.Loader):
  """Runs the wrapped loader of `tensorflow` with fd 2 filtered."""

  def __init__(self, loader, finder: _QuietTensorFlowImport):
    self._loader, self._finder = loader, finder

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    if self._finder in sys.meta_path:  # TensorFlow loads once: the hook's job is done.
      sys.meta_path.remove(self._finder)
    try:
      with _filtered_stderr_fd():
        self._loader.exec_module(module)
    finally:  # The module keeps its real loader.
      module.__loader__ = self._loader
      if getattr(module, "__spec__", None) is not None:
        module.__spec__.loader = self._loader


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Filters the first `import tensorflow`, wherever a command (or a library it
  calls) does it, so commands that never need TensorFlow never pay for it."""

  def find_spec(self, name, path=None, target=None):
    if name != "tensorflow" or name in sys.modules:
      return None
    for finder in sys.meta_path:
      find = getattr(finder, "find_spec", None) if finder is not self else None
      spec = find(name, path, target) if find else None
      if spec is not None:
        if spec.loader is not None:
          spec.loader = _QuietLoader(spec.loader, self)
        return spec
    return None


def _quiet_tensorflow_startup() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if "tensorflow" not in sys.modules and not any(
      isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _QuietTensorFlowImport())


# --- workdirs ----------------------------------------------------------------------


def _new_top(path: str) -> str | None:
  """The highest folder of `path` that does not exist yet (None if `path` exists):
  what a failed command may remove again."""
  path = os.path.abspath(path)
  if os.path.lexists(path):
    return None
  while True:
    parent = os.path.dirname(path)
    if parent == path or os.path.lexists(parent):
      return path
    path = parent


def _remove_if_empty(top: str) -> None:
  """Removes `top` if it holds no files, only (nested) empty folders."""
  if not os.path.isdir(top) or os.path.islink(top):
    return
  for root, dirs, files in os.walk(top):
    if files or any(os.path.islink(os.path.join(root, d)) for d in dirs):
      return
  for root, _, _ in os.walk(top, topdown=False):
    try:
      os.rmdir(root)
    except OSError:
      return


def _user_error_types() -> tuple[type[BaseException], ...]:
  from input_pipeline.errors import ConfigError, InputError
  return (UserError, InputError, ConfigError, FileNotFoundError, NotADirectoryError)


def main(argv: Sequence[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  # Before jax starts its threads: XLA:CPU's per-step buffers then reuse freed
  # heap memory instead of page-faulting fresh memory (avjax/ops/host_memory.py).
  from avjax.ops import host_memory
  host_memory.keep_freed_host_memory()
  verbose = "--verbose" in argv or "-v" in argv
  logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                      format="%(levelname)s %(name)s: %(message)s")
  if not verbose:
    _quiet_tensorflow_startup()
  new_workdir = None
  rc = EXIT_FAILURE
  try:
    args = parse_args(argv)
    verbose = bool(args.verbose)
    if getattr(args, "workdir", None):
      new_workdir = _new_top(args.workdir)
    rc = int(args.handler(args) or 0)
    return rc
  except SystemExit as e:  # --help exits 0 through argparse.
    rc = int(e.code or 0)
    return rc
  except KeyboardInterrupt:
    print(f"{PROG}: interrupted", file=sys.stderr)
    rc = 130
    return rc
  except Exception as e:  # noqa: BLE001 - the CLI is the one place errors become lines.
    user = isinstance(e, _user_error_types())
    if verbose:
      traceback.print_exc()
    message = " ".join(str(e).split()) or type(e).__name__
    if not user:
      message = f"{type(e).__name__}: {message}"
      if not verbose:
        message += " (run again with --verbose for the traceback)"
    print(f"{PROG}: error: {message}", file=sys.stderr)
    rc = EXIT_USER_ERROR if user else EXIT_FAILURE
    return rc
  finally:
    # A command that failed leaves no empty workdir it made (nor its empty fold_K).
    if rc != 0 and new_workdir:
      _remove_if_empty(new_workdir)


if __name__ == "__main__":
  sys.exit(main())
