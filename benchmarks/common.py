"""Timing helpers shared by the benchmarks.

The benchmarks run on shared machines where absolute times are noise, so every
script times avjax and its baseline in the same process, back to back, and
reports the *ratio*. These helpers keep that uniform: warm-up runs that are not
timed, repeated runs reduced to a median, the load average around each
measurement (to judge how noisy it was), a plain-text table, `ratio:` lines a
test or a person can grep, and a JSON dump of everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


@dataclasses.dataclass
class Measurement:
  """Wall times of one method over `repeat` runs, each processing `items` items."""
  name: str
  unit: str            # what `items` counts: "clips", "examples"
  items: int
  times: list[float]
  load: list[float]    # 1-minute load average before each run
  note: str = ""
  cpu: list[float] = dataclasses.field(default_factory=list)  # CPU s, children included

  @property
  def cpu_median(self) -> float:
    return statistics.median(self.cpu) if self.cpu else float("nan")

  def extend(self, other: Measurement) -> None:
    """Adds another round's runs (rounds interleave methods, so load drift is shared)."""
    self.times += other.times
    self.load += other.load
    self.cpu += other.cpu

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def rate(self) -> float:
    """Items per second at the median time."""
    return self.items / self.median if self.median > 0 else float("inf")

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "median_s": self.median,
            "cpu_median_s": self.cpu_median,
            f"{self.unit}_per_s": self.rate}


def cpu_seconds() -> float:
  """User + system CPU of this process and its reaped children (pool workers,
  ffmpeg): unlike wall time, it barely depends on what else the machine runs."""
  total = 0.0
  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
    usage = resource.getrusage(who)
    total += usage.ru_utime + usage.ru_stime
  return total


def load_average() -> float:
  try:
    return os.getloadavg()[0]
  except OSError:
    return float("nan")


def measure(name: str, fn: Callable[[], Any], *, items: int, unit: str,
            repeat: int = 1, warmup: int = 0,
            warmup_fn: Callable[[], Any] | None = None, note: str = "") -> Measurement:
  """Runs `warmup_fn` (or `fn`) `warmup` times untimed, then times `fn` `repeat`
  times. Warm-up absorbs one-off costs (imports, page cache, JIT) that a long
  run would amortise."""
  for _ in range(warmup):
    (warmup_fn or fn)()
  times, load, cpu = [], [], []
  for _ in range(max(1, repeat)):
    load.append(load_average())
    cpu_start, start = cpu_seconds(), time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
    cpu.append(cpu_seconds() - cpu_start)
  return Measurement(name=name, unit=unit, items=items, times=times, load=load, note=note,
                     cpu=cpu)


def _fmt(value: Any) -> str:
  return f"{value:.2f}" if isinstance(value, float) else str(value)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
  """Left-aligned plain-text table (no dependency, pasteable into a note)."""
  cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  for n, r in enumerate(cells):
    print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if n == 0:
      print("  ".join("-" * w for w in widths))


def measurement_table(ms: Sequence[Measurement]) -> None:
  print_table([(m.name, m.items, f"{m.median:.2f}", len(m.times), f"{m.rate:.2f}",
                f"{m.cpu_median:.1f}", f"{statistics.mean(m.load):.1f}", m.note)
               for m in ms],
              ["method", "items", "median s", "runs", "items/s", "cpu s", "load", "note"])


def ratio_line(value: float, label: str, *, at_least: float | None = None,
               at_most: float | None = None) -> dict:
  """Prints `ratio: X.XX  label [target ...: met|MISSED]` and returns it as a dict."""
  target, met = "", None
  if at_least is not None:
    met = value >= at_least
    target = f"  [target >= {at_least:.2f}: {'met' if met else 'MISSED'}]"
  elif at_most is not None:
    met = value <= at_most
    target = f"  [target <= {at_most:.2f}: {'met' if met else 'MISSED'}]"
  print(f"ratio: {value:.2f}  {label}{target}")
  return {"label": label, "value": value, "at_least": at_least, "at_most": at_most,
          "met": met}


def machine() -> dict:
  """Facts needed to read a result later: when, where, and how busy it was."""
  return {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "host": platform.node(), "cpu_count": os.cpu_count(),
          "python": platform.python_version(), "load_average": list(os.getloadavg())}


def base_parser(description: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes: checks the script runs, numbers mean nothing")
  parser.add_argument("--json", metavar="OUT", help="write all results as JSON here")
  parser.add_argument("--repeat", type=int, default=None, help="timed runs per method")
  parser.add_argument("--warmup", type=int, default=None, help="untimed runs first")
  return parser


def write_json(path: str | None, payload: dict) -> None:
  if not path:
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=str)
  print(f"wrote {path}")


def s1_fusion(audio_kw: dict | None = None, video_kw: dict | None = None,
              num_classes: int = 8):
  """S1's fusion net as avjax registers it (`feature_concat_fusion` over
  `sultana_audio` and `sultana_video`), trained end to end (branches not frozen):
  the whole network a Keras or PyTorch replica of S1 would train in one step."""
  from avjax import models
  branches = {"audio": {"name": "sultana_audio", **(audio_kw or {})},
              "video": {"name": "sultana_video", **(video_kw or {})}}
  return models.get_model("feature_concat_fusion", num_classes=num_classes,
                          branches=branches, hidden=(128,), freeze_branches=False)
