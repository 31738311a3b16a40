"""Runs and workdirs: a resume under another config is refused naming the fields (unless
listed in resume_may_change), a finished run says so, readers never clean a workdir's temp
files, a multi-task launcher without distributed=True stops, and the weights' or the
run's align_corners is the one used. Checkpoints are written directly (no training step is
compiled): each refusal comes before the first step."""
import os

import jax.numpy as jnp
import pytest

import hydrajax
from hydrajax.evaluate import loop as evaluate
from hydrajax.runtime import parallel
from hydrajax.train import checkpoint, config_check, distill
from hydrajax.train import loop as train_lib
from tests.helpers.configs import tiny_config


def _run_with_checkpoint(workdir, step, metrics=None, **overrides):
  """WORKDIR/checkpoints/<step> as a run of tiny_config(**overrides) leaves it."""
  config = config_check.validate(tiny_config(**overrides))
  state = train_lib.create_train_state(config).replace(step=jnp.asarray(step, jnp.int32))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  ckpt.save(step, state, metrics=metrics, config=parallel.flat_config(config))
  ckpt.close()
  return config


def _snapshot(directory):
  """{relative path: (size, mtime_ns)} of every file below `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      st = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), directory)] = (st.st_size, st.st_mtime_ns)
  return out


def test_resume_under_another_config_is_refused_naming_the_fields(tmp_path):
  _run_with_checkpoint(tmp_path, 2, num_train_steps=2)
  before = _snapshot(tmp_path)
  with pytest.raises(ValueError) as err:
    train_lib.train_and_evaluate(tiny_config(lr_decoder=0.5, num_train_steps=4), str(tmp_path))
  message = str(err.value)
  assert f"{tmp_path}/checkpoints/2 was trained under another config (2 fields: " in message
  assert "lr_decoder: 0.008 -> 0.5" in message and "num_train_steps: 2 -> 4" in message
  assert "--config.resume_may_change=lr_decoder,num_train_steps" in message
  assert "\n" not in message
  assert _snapshot(tmp_path) == before  # nothing written, nothing removed


def test_finished_run_says_so_and_returns_its_metrics(tmp_path, capsys):
  _run_with_checkpoint(tmp_path, 4, metrics={"miou": 0.25})
  # eval_every_steps and progress_bar differ: the first is allowed, the second always is.
  config = tiny_config(eval_every_steps=7, progress_bar=True,
                       resume_may_change=("eval_every_steps",))
  before = _snapshot(tmp_path)
  assert train_lib.train_and_evaluate(config, str(tmp_path)) == {"miou": 0.25}
  out = capsys.readouterr().out
  assert (f"{tmp_path}: nothing to do: its checkpoint is at step 4 and num_train_steps=4; "
          "to train further raise --config.num_train_steps") in out
  assert _snapshot(tmp_path)[os.path.join("checkpoints", "4", "_CHECKPOINT_METADATA")] == (
      before[os.path.join("checkpoints", "4", "_CHECKPOINT_METADATA")])


def test_resume_may_change_is_checked_and_covers_sub_fields():
  assert checkpoint.resume_differences({"eval.crop": "'none'", "seed": "0"},
                                       {"eval.crop": "'garg'", "seed": "0"}, ("eval",)) == []
  assert checkpoint.resume_differences({"eval_every_steps": "5"}, {"eval_every_steps": "7"},
                                       ("eval",)) == ["eval_every_steps: 5 -> 7"]
  # As the command line gives --config.resume_may_change=num_train_steps,eval
  config = config_check.validate(tiny_config(resume_may_change=("num_train_steps,eval",)))
  assert config.resume_may_change == ("num_train_steps", "eval")
  with pytest.raises(config_check.ConfigError,
                     match=r"config.resume_may_change=\('num_train_step',\): expected names of "
                           r"config fields; no field num_train_step"):
    config_check.validate(tiny_config(resume_may_change=("num_train_step",)))


def test_evaluate_opens_checkpoints_read_only_and_keeps_a_live_save(tmp_path, monkeypatch):
  config = _run_with_checkpoint(tmp_path, 2)
  in_flight = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-123"
  os.makedirs(in_flight / "state")
  (in_flight / "state" / "part").write_bytes(b"being written")
  # Orbax cleans temp directories in a background thread that may outlive the reader, so
  # the options it is given are checked too.
  opened, manager = [], checkpoint.ocp.CheckpointManager

  def spy(directory, *args, options=None, **kwargs):
    opened.append(options)
    return manager(directory, *args, options=options, **kwargs)

  monkeypatch.setattr(checkpoint.ocp, "CheckpointManager", spy)
  variables, origin = evaluate.load_variables(config, str(tmp_path))
  assert [(o.read_only, o.cleanup_tmp_directories, o.create) for o in opened] == [
      (True, False, False)]
  assert origin == f"{tmp_path}/checkpoints/2 (latest)"
  assert (in_flight / "state" / "part").read_bytes() == b"being written"
  with pytest.raises(ValueError, match="opened read-only"):
    checkpoint.Checkpointer(tmp_path / "checkpoints", read_only=True).save(3, {})


@pytest.mark.parametrize("env,variable", [
    ({"SLURM_NTASKS": "4"}, "SLURM_NTASKS=4"),
    ({"SLURM_NPROCS": "2"}, "SLURM_NPROCS=2"),
    ({"OMPI_COMM_WORLD_SIZE": "4"}, "OMPI_COMM_WORLD_SIZE=4"),
    ({"PMI_SIZE": "3"}, "PMI_SIZE=3")])
def test_multi_task_launch_without_distributed_stops(env, variable, tmp_path, monkeypatch):
  for name in parallel.LAUNCHER_TASK_VARIABLES:
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=rf"started as one of \d tasks \({variable}\) but "
                                       r"config.distributed is False"):
    train_lib.train_and_evaluate(tiny_config(), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
  with pytest.raises(ValueError, match=variable):
    evaluate.run(tiny_config(), str(tmp_path / "run"))
  with pytest.raises(ValueError, match=rf"\({variable}\): distillation runs as one process"):
    distill.run(tiny_config(), str(tmp_path / "labels"), weights=str(tmp_path / "w.npz"))
  assert not (tmp_path / "labels").exists()


def test_one_task_of_a_larger_allocation_runs():
  # srun -n 1 inside a 4-task allocation: the step's count decides.
  assert parallel.launcher_tasks({"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "4"}) is None
  assert parallel.launcher_tasks({"OMPI_COMM_WORLD_SIZE": "1"}) is None
  assert parallel.launcher_tasks({}) is None


def test_fine_tuning_weights_of_other_upsampling_is_refused(tmp_path):
  path = tmp_path / "densetorch.npz"
  hydrajax.save(path, hydrajax.init(0, num_classes=40, align_corners=True))
  with pytest.raises(ValueError, match=rf"init_from={path}: these weights upsample with "
                                       r"align_corners=True but config.align_corners=False"):
    train_lib.initial_variables(config_check.validate(tiny_config(init_from=str(path))))
  variables = train_lib.initial_variables(config_check.validate(
      tiny_config(init_from=str(path), align_corners=True)))
  assert "params" in variables


def test_evaluation_uses_the_weights_and_the_runs_upsampling_and_says_so(tmp_path, capsys):
  path = tmp_path / "densetorch.npz"
  hydrajax.save(path, hydrajax.init(0, num_classes=40, align_corners=True))
  config = config_check.validate(tiny_config())
  variables, _ = evaluate.load_variables(config, "", str(path))
  assert hydrajax.api.model_config(variables)["align_corners"] is True
  assert (f"{path}: align_corners=True from its weights file (config.align_corners=False is "
          "not used)") in capsys.readouterr().out
  _run_with_checkpoint(tmp_path / "run", 2, align_corners=True)
  variables, origin = evaluate.load_variables(config, str(tmp_path / "run"))
  assert hydrajax.api.model_config(variables)["align_corners"] is True
  assert (f"{origin}: align_corners=True from the config it was trained with"
          in capsys.readouterr().out)
