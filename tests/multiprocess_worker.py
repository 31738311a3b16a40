"""One process of a local multi-process run, for tests/test_multiprocess.py.

  python -m tests.multiprocess_worker MODE PROCESS_ID NUM_PROCESSES PORT WORKDIR [JSON]

MODE: "train" (train_and_evaluate, then evaluate.run; process 0 writes WORKDIR/result.json),
"kill2" (the same, stopped by an exception right after the step-2 checkpoint), "config" (only
the start-up config check; process 1 has another lr_decoder), "die" (process 1 exits at once
after joining; process 0 then waits in collectives). JSON: tiny_config overrides.
"""
import json
import os
import sys

from tests.train_testlib import tiny_config


def main(mode: str, process_id: int, num_processes: int, port: int, workdir: str,
         overrides: dict) -> None:
  from hydrajax import checkpoint, evaluate, parallel, train_lib

  config = tiny_config(**overrides)
  config.distributed = True
  config.coordinator_address = f"127.0.0.1:{port}"
  config.num_processes, config.process_id = num_processes, process_id
  if mode == "die":
    config.heartbeat_timeout = 5
    parallel.initialize(config)
    parallel.allgather_bytes(b"joined")
    if process_id == 1:
      os._exit(3)
    for _ in range(10_000):  # collectives with a dead peer: must not hang
      parallel.allgather_bytes(b"waiting")
    return
  if mode == "config":
    if process_id == 1:
      config.lr_decoder *= 2
    parallel.initialize(config)
    parallel.check_same_config(config, workdir)
    return
  if mode == "kill2":
    original = checkpoint.Checkpointer.save

    def save_then_stop(self, step, *args, **kwargs):
      original(self, step, *args, **kwargs)
      if step == 2:
        raise SystemExit(7)

    checkpoint.Checkpointer.save = save_then_stop
  result = train_lib.train_and_evaluate(config, workdir)
  evaluate.run(config, workdir)
  if parallel.is_primary():
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump({k: v for k, v in result.items() if isinstance(v, (int, float))}, f)


if __name__ == "__main__":
  args = sys.argv[1:]
  main(args[0], int(args[1]), int(args[2]), int(args[3]), args[4],
       json.loads(args[5]) if len(args) > 5 else {})
