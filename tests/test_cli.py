"""The CLI contract: subcommands, --help, one-line errors, exit codes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from avjax import cli

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ("synth", "prepare", "train", "evaluate", "cv", "results", "export", "predict",
               "demo")


def run(*args, check_rc=None):
  proc = subprocess.run([sys.executable, "-m", "avjax", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120)
  if check_rc is not None:
    assert proc.returncode == check_rc, proc.stderr
  return proc


def test_every_subcommand_has_help():
  parser = cli.build_parser()
  sub = next(a for a in parser._actions if a.dest == "command")
  assert set(sub.choices) == set(SUBCOMMANDS)
  for name in SUBCOMMANDS:
    with pytest.raises(SystemExit) as done:
      cli.parse_args([name, "--help"])
    assert done.value.code == 0


def test_python_dash_m_and_help_exit_zero():
  proc = run("--help", check_rc=0)
  for name in SUBCOMMANDS:
    assert name in proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (["synth", "--out", "x", "--actors", "0"], "--actors"),
    (["synth", "--out", "x", "--clips-per-emotion", "two"], "--clips-per-emotion"),
    (["synth"], "--out"),
    (["prepare", "--dataset", "iemocap", "--manual-dir", "a", "--data-dir", "b",
      "--features", "mfcc"], "iemocap"),
    (["frobnicate"], "frobnicate"),
    (["evaluate", "--workdir", "w", "--bogus"], "--bogus"),
    (["synth", "--out", "x", "--config.model.name=Foo"], "--config"),
])
def test_bad_arguments_give_one_line_and_exit_2(args, fragment, capsys):
  rc = cli.main(args)
  err = capsys.readouterr().err.strip()
  assert rc == 2
  assert len(err.splitlines()) == 1, err
  assert err.startswith("avjax: error:") and fragment in err
  assert "Traceback" not in err


def test_missing_config_and_wrong_key_are_user_errors(tmp_path, capsys):
  rc = cli.main(["train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)])
  err = capsys.readouterr().err
  assert rc == 2 and "nope.py" in err and len(err.strip().splitlines()) == 1
  config = tmp_path / "tiny.py"
  config.write_text("import ml_collections\n"
                    "def get_config(arg=None):\n"
                    "  return ml_collections.ConfigDict({'lr': 0.1, 'model': {'width': 4}})\n")
  rc = cli.main(["train", "--config", str(config), "--workdir", str(tmp_path),
                 "--config.model.widht=8"])
  err = capsys.readouterr().err
  assert rc == 2 and "widht" in err and "width" in err
  assert len(err.strip().splitlines()) == 1
  # A wrong section lists the keys that exist at its level too.
  rc = cli.main(["train", "--config", str(config), "--workdir", str(tmp_path),
                 "--config.modle.width=8"])
  err = capsys.readouterr().err
  assert rc == 2 and "'modle'" in err and "lr" in err and "model" in err
  assert len(err.strip().splitlines()) == 1


def test_input_errors_name_the_file(tmp_path, capsys):
  rc = cli.main(["prepare", "--dataset", "ravdess", "--manual-dir", str(tmp_path / "absent"),
                 "--data-dir", str(tmp_path / "d"), "--features", "mfcc"])
  err = capsys.readouterr().err
  assert rc == 2 and str(tmp_path / "absent") in err and "does not exist" in err


def test_predict_with_a_missing_model_is_a_one_line_error(fixtures_dir, capsys):
  clip = next((fixtures_dir / "ravdess").rglob("03-*.wav"))  # A real clip: the model is amiss.
  rc = cli.main(["predict", str(clip), "--model", "m"])
  err = capsys.readouterr().err
  assert rc == 2 and "model directory does not exist" in err
  assert len(err.strip().splitlines()) == 1


def test_verbose_shows_traceback(tmp_path):
  proc = run("--verbose", "prepare", "--dataset", "ravdess", "--manual-dir",
             str(tmp_path / "absent"), "--data-dir", str(tmp_path), "--features", "mfcc")
  assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_synth_writes_ravdess_layout(tmp_path):
  from input_pipeline.naming import parse_ravdess
  proc = run("synth", "--out", str(tmp_path), "--actors", "2", "--clips-per-emotion", "1",
             "--seed", "0", "--workers", "1", "--quiet", check_rc=0)
  assert "16 clips" in proc.stdout
  for actor in (1, 2):
    files = sorted(p.name for p in (tmp_path / f"Actor_{actor:02d}").iterdir())
    names = [parse_ravdess(f) for f in files]
    assert {n.modality for n in names} == {1, 3}
    assert sorted(n.emotion for n in names if n.modality == 1) == list(range(1, 9))
    assert all(n.actor == actor for n in names)


# --- data config mistakes, workdirs, --verbose anywhere, TensorFlow's noise ------------

S1_AUDIO = str(REPO / "experiments" / "sultana2024.py") + ":audio,smoke"


def _actors(data_dir) -> list[int]:
  from input_pipeline import loader
  return sorted(loader._actor_splits(loader.open_prepared(str(data_dir), "ravdess", "mfcc")))


def test_data_config_mistakes_exit_2_in_one_line_and_leave_no_workdir(prepared, tmp_path,
                                                                      capsys):
  data_dir = prepared("mfcc")
  n = len(_actors(data_dir))
  data = [f"--config.data.data_dir={data_dir}"]
  kfold = [*data, "--config.data.protocol=actor_kfold", f"--config.data.k={n}"]
  cases = [
      (["train", *data, "--config.data.protocol=actor_fold"], "actor_fold"),
      (["train", *data, "--config.data.protocol=actor_kfold", f"--config.data.k={n + 1}"],
       f"--config.data.k={min(5, n)}"),
      (["train", *data, "--config.data.protocol=random_clip"], "allow_leaky"),
      # The default protocol's fold 0 trains on none of the corpus's actors.
      (["train", *data], f"--config.data.protocol=actor_kfold --config.data.k={min(5, n)}"),
      (["train", *kfold, "--config.train.global_batch_size=4096"], "global_batch_size"),
      (["cv", *kfold, "--folds", str(n + 3)], "out of range"),
  ]
  for i, (args, fragment) in enumerate(cases):
    new = tmp_path / f"new_{i}"  # Neither it nor its workdir exist yet.
    command, rest = args[0], args[1:]
    rc = cli.main([command, "--config", S1_AUDIO, "--workdir", str(new / "run"), *rest])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("avjax: error:"), err
    assert fragment in err, err
    assert "Error:" not in err and "--verbose" not in err, err  # No class name, no hint.
    assert not new.exists(), sorted(p.name for p in new.rglob("*"))


def test_a_failed_command_keeps_a_workdir_that_existed_or_holds_files(tmp_path, monkeypatch,
                                                                      capsys):
  def fail_after(make):
    def handler(args):
      make(args.workdir)
      raise cli.UserError("planned failure")
    return handler
  existing = tmp_path / "existing"
  existing.mkdir()
  monkeypatch.setattr(cli, "_cmd_evaluate", fail_after(lambda w: None))
  assert cli.main(["evaluate", "--workdir", str(existing)]) == 2
  assert existing.is_dir()
  with_file = tmp_path / "with_file"
  monkeypatch.setattr(cli, "_cmd_evaluate", fail_after(
      lambda w: (os.makedirs(w), open(os.path.join(w, "config.json"), "w").close())))
  assert cli.main(["evaluate", "--workdir", str(with_file)]) == 2
  assert (with_file / "config.json").exists()
  empty = tmp_path / "a" / "b"
  monkeypatch.setattr(cli, "_cmd_evaluate", fail_after(
      lambda w: os.makedirs(os.path.join(w, "fold_7"))))
  assert cli.main(["evaluate", "--workdir", str(empty)]) == 2
  assert not (tmp_path / "a").exists()
  capsys.readouterr()


@pytest.mark.parametrize("argv", [["-v", "evaluate", "--workdir", "w"],
                                  ["evaluate", "--workdir", "w", "--verbose"],
                                  ["evaluate", "-v", "--workdir", "w"]])
def test_verbose_is_accepted_before_or_after_the_subcommand(argv):
  assert cli.parse_args(argv).verbose is True


def test_not_verbose_by_default_and_internal_errors_keep_the_hint(monkeypatch, capsys):
  assert cli.parse_args(["evaluate", "--workdir", "w"]).verbose is False
  monkeypatch.setattr(cli, "_cmd_evaluate", lambda args: 1 / 0)
  assert cli.main(["evaluate", "--workdir", "w"]) == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "ZeroDivisionError" in err and "run again with --verbose" in err
  assert cli.main(["evaluate", "--workdir", "w", "--verbose"]) == 1
  err = capsys.readouterr().err
  assert "Traceback" in err and "run again with --verbose" not in err


def test_verbose_after_the_subcommand_shows_traceback(tmp_path):
  proc = run("prepare", "--dataset", "ravdess", "--manual-dir", str(tmp_path / "absent"),
             "--data-dir", str(tmp_path), "--features", "mfcc", "--verbose")
  assert proc.returncode == 2 and "Traceback" in proc.stderr
  assert "does not exist" in proc.stderr and "unrecognized" not in proc.stderr


def test_tensorflow_start_up_lines_are_filtered_from_stderr(capfd):
  noise = ("WARNING: All log messages before absl::InitializeLog() is called are written "
           "to STDERR\n"
           "I0000 00:00:1795391584.477420    5713 port.cc:153] oneDNN custom operations are "
           "on. You may see slightly different numerical results.\n")
  with cli._filtered_stderr_fd():
    os.write(2, (noise + "a real problem\n" + noise).encode())
  assert capfd.readouterr().err == "a real problem\n"


def test_a_command_that_imports_tensorflow_prints_only_its_error(tmp_path):
  """`evaluate` imports TensorFlow (through its libraries) before it finds that
  the workdir is missing: stderr must hold the error line and nothing else."""
  proc = run("evaluate", "--workdir", str(tmp_path / "absent"))
  assert proc.returncode == 2
  assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines()
                                      if line.startswith("avjax: error:")]
  assert len(proc.stderr.splitlines()) == 1, proc.stderr


# --- export --step, the demo's steps -------------------------------------------------


def test_export_of_a_step_not_kept_lists_the_kept_steps(tmp_path, capsys):
  import json

  import numpy as np

  from avjax.configs import load_config
  from avjax.train.checkpoint import Checkpointer
  workdir = tmp_path / "run"
  workdir.mkdir()
  # What export reads before the checkpoint: the run's config and its classes.
  (workdir / "config.json").write_text(load_config(S1_AUDIO).to_json_best_effort())
  (workdir / "report.json").write_text(json.dumps({"class_names": list("abcdefgh")}))
  checkpointer = Checkpointer(str(workdir), keep=2, async_save=False)
  for step in (1, 2, 3):
    checkpointer.save(step, {"w": np.ones(2, np.float32)}, None, {"seed": 0})
  checkpointer.wait()
  kept = sorted(checkpointer.all_steps())
  checkpointer.close()
  gone = next(s for s in (1, 2, 3) if s not in kept)
  rc = cli.main(["export", "--workdir", str(workdir), "--out", str(tmp_path / "out"),
                 "--step", str(gone)])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1, err
  assert f"step {gone}" in err and ", ".join(map(str, kept)) in err
  assert "Error:" not in err


def test_demo_has_no_not_built_yet_status():
  from avjax import demo, errors
  assert not hasattr(errors, "NotBuiltYet")
  summary = demo.DemoSummary("w", [demo.StepResult("synth", "ran")])
  assert "not built yet" not in summary.table()
