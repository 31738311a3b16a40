"""One process of a local multi-process run, for tests/test_multiprocess.py.

  python -m tests.helpers.multiprocess_worker MODE PROCESS_ID NUM_PROCESSES PORT WORKDIR [JSON]

MODE: "train" (train_and_evaluate stopped by an exception right after the step-2 checkpoint,
then resumed by train_and_evaluate, then evaluate.run; process 0 writes WORKDIR/result.json),
"check" (the start-up config check with another lr_decoder on process 1, and the resume-step
check with a checkpoint seen by process 0 only, printing their errors;
then process 1 exits at once and process 0 keeps calling collectives, which must end in an
error).
JSON: tiny_config overrides.
"""
import json
import os
import sys

from tests.helpers.configs import stop_after_checkpoint, tiny_config


def main(mode: str, process_id: int, num_processes: int, port: int, workdir: str,
         overrides: dict) -> None:
  from hydrajax.evaluate import loop as evaluate
  from hydrajax.runtime import parallel
  from hydrajax.train import loop as train_lib

  config = tiny_config(**overrides)
  config.distributed = True
  config.coordinator_address = f"127.0.0.1:{port}"
  config.num_processes, config.process_id = num_processes, process_id
  if mode == "check":
    config.heartbeat_timeout = 5
    if process_id == 1:
      config.lr_decoder *= 2
    parallel.initialize(config)
    for check in (lambda: parallel.check_batch(6, parallel.devices()),
                  lambda: parallel.check_same_config(config, workdir),
                  # as when only process 0 sees the checkpoints (a workdir not shared)
                  lambda: parallel.check_agree("the checkpoint step to resume from",
                                               [4, None][process_id])):
      try:
        check()
      except ValueError as e:
        print(f"ValueError: {e}", flush=True)
    if process_id == 1:
      os._exit(3)  # dies without a word: process 0 must not wait for it forever
    for _ in range(100_000):
      parallel.allgather_bytes(b"waiting")
    return
  # A run stopped right after its step-2 checkpoint (as a crash would leave it), then
  # resumed by a fresh train_and_evaluate in the same processes (the compiled step is reused:
  # a second launch would compile everything again).
  try:
    with stop_after_checkpoint(2, _Stopped):
      train_lib.train_and_evaluate(config, workdir)
  except _Stopped:
    print(f"stopped after step 2; checkpoints: {os.listdir(workdir + '/checkpoints')}", flush=True)
  result = train_lib.train_and_evaluate(config, workdir)
  evaluate.run(config, workdir)
  if parallel.is_primary():
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump({k: v for k, v in result.items() if isinstance(v, (int, float))}, f)


class _Stopped(Exception):
  pass


if __name__ == "__main__":
  args = sys.argv[1:]
  main(args[0], int(args[1]), int(args[2]), int(args[3]), args[4],
       json.loads(args[5]) if len(args) > 5 else {})
