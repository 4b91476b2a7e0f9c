"""The CLI contract: subcommands, --help, one-line errors, exit codes."""

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


def test_input_errors_name_the_file(tmp_path, capsys):
  rc = cli.main(["prepare", "--dataset", "ravdess", "--manual-dir", str(tmp_path / "absent"),
                 "--data-dir", str(tmp_path / "d"), "--features", "mfcc"])
  err = capsys.readouterr().err
  assert rc == 2 and str(tmp_path / "absent") in err and "does not exist" in err


def test_predict_with_a_missing_model_is_a_one_line_error(capsys):
  rc = cli.main(["predict", "clip.mp4", "--model", "m"])
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
