"""One process of a multi-process CPU run of the real trainer, for test_multihost.

Usage: multihost_driver.py WORKDIR DATA_DIR OUT_JSON [config overrides...]

Multi-host start-up comes from the environment exactly as in production
(AVJAX_COORDINATOR, AVJAX_NUM_PROCESSES, AVJAX_PROCESS_ID; see
avjax/train/sharding.py). The test sets XLA_FLAGS (simulated CPU devices per
process) and JAX_PLATFORMS=cpu. The only addition to a plain `avjax train` is an
observation hook: `input_pipeline.loader.create_datasets` is wrapped so that
every training batch this process hands to the trainer is fingerprinted (one
digest per example), counted into the file AVJAX_TEST_PROGRESS if set, and with
AVJAX_TEST_STEP_SLEEP slowed down so that a signal can land mid-run. What it saw is written to OUT_JSON when the trainer returns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import grain  # noqa: E402

from avjax.configs import load_config  # noqa: E402
from avjax.train import trainer  # noqa: E402
from input_pipeline import loader  # noqa: E402

CONFIG = os.path.join(REPO, "experiments", "sultana2024.py") + ":audio,smoke"


def example_digest(mfcc, label) -> str:
  """What identifies one training example: its features and its label."""
  h = hashlib.sha1(memoryview(mfcc.astype("<f4").tobytes()))
  h.update(str(int(label)).encode())
  return h.hexdigest()[:16]


def batch_digests(batch) -> list[str]:
  return [example_digest(batch["mfcc"][i], batch["label"][i])
          for i in range(len(batch["label"]))]


class _Record(grain.transforms.Map):
  """Passes batches through, remembering what they were (and sleeping)."""

  def __init__(self, seen: list, sleep: float, progress: str):
    self.seen, self.sleep, self.progress = seen, sleep, progress

  def map(self, batch):
    self.seen.append(batch_digests(batch))
    if self.progress:  # How many batches were handed out, for a test to poll.
      with open(self.progress + ".tmp", "w", encoding="utf-8") as f:
        f.write(str(len(self.seen)))
      os.replace(self.progress + ".tmp", self.progress)
    if self.sleep:
      time.sleep(self.sleep)
    return batch


def main(workdir: str, data_dir: str, out_json: str, overrides: list[str]) -> None:
  logging.basicConfig(level=logging.INFO, force=True,  # The trainer's info lines.
                      format="%(levelname)s %(name)s: %(message)s")
  config = load_config(CONFIG, overrides)
  config.data.data_dir = data_dir
  config.data.protocol = "actor_kfold"
  config.data.k = 4

  seen: list[list[str]] = []
  calls: list[dict] = []
  sleep = float(os.environ.get("AVJAX_TEST_STEP_SLEEP", "0") or 0)
  progress = os.environ.get("AVJAX_TEST_PROGRESS", "")
  real_create = loader.create_datasets

  def create_datasets(data_config, **kwargs):
    calls.append({k: kwargs[k] for k in ("global_batch_size", "seed", "process_index",
                                         "process_count")})
    ds = real_create(data_config, **kwargs)
    return loader.Datasets(train=ds.train.map(_Record(seen, sleep, progress)), evals=ds.evals,
                           info=ds.info, fit_batches=ds.fit_batches)

  loader.create_datasets = create_datasets
  final = trainer.train_and_evaluate(config, workdir)

  import jax  # Imported by the trainer; queried only after initialisation.
  out = {"process_index": jax.process_index(), "process_count": jax.process_count(),
         "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
         "local_device_ids": [d.id for d in jax.local_devices()],
         "create_datasets_calls": calls, "train_batches": seen,
         "final": {k: float(v) for k, v in final.items()}}
  with open(out_json, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
