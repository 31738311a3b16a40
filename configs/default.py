"""Shared defaults for every hydrajax training run: each field, with its meaning.

Other configs start from `get_config()` here and change a few fields. Any field can be
overridden on the command line:

  python train.py --config configs/default.py --workdir runs/x --config.batch_size=8
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()

  # --- data ---------------------------------------------------------------------------
  c.dataset = "synthetic"        # "synthetic" | "nyud" | "nyud_raw" | "kitti" |
                                 # "kitti_semantics" | "folder" (hydrajax/data/registry.py)
  c.data_dir = ""                # dataset root (unused by "synthetic")
  c.teacher_dir = ""             # labels written by `python -m hydrajax.train.distill` ("" = none)
  c.crop_size = (96, 128)        # training crop (H, W); smaller scaled images are padded
  c.scale_range = (0.5, 2.0)     # random rescale factor range (depth divided by the factor)
  c.flip = True                  # random horizontal mirror
  c.num_workers = 0              # Grain worker processes for training data (0 = in process)
  c.prefetch_to_device = 2       # batches copied to the devices ahead of the step (0 = none)
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.num_train = 2000   # procedurally generated training scenes
  c.synthetic.num_val = 64       # held-out scenes (a different seed: never seen in training)
  c.synthetic.height = 120       # generated image size (pixels)
  c.synthetic.width = 160
  c.synthetic.seed = 0           # training scenes; validation uses seed + 1
  c.depth_divisor = 0.0          # KITTI depth PNG value -> metres divisor (0 = source default)
  c.kitti = ml_collections.ConfigDict()  # KITTI file lists, see configs/kitti.py

  # --- model --------------------------------------------------------------------------
  c.num_classes = 7              # segmentation classes (0 if "segm" is not a task)
  c.tasks = ("segm", "depth")    # heads to train: any of "segm", "depth", "normals"
  c.align_corners = False        # decoder upsampling: False = official models
  c.init_from = ""               # weights .npz (hydrajax.load) to start from; keys whose
                                 # shape differs (e.g. another class count) stay fresh
  c.init_seed = 0                # seed of the fresh (PyTorch-style) initialisation
  c.impl = "auto"                # layer form (hydrajax.models.ops): "auto" = the FFI kernels
                                 # or XLA rewrites on CPU, XLA's own ops on GPU/TPU;
                                 # "native", "xla_cpu" or "ffi" to force one
  c.dtype = "float32"            # compute dtype: "float32" or "bfloat16" (mixed precision for
                                 # GPU/TPU: bf16 convs and activations; parameters, BatchNorm
                                 # statistics, outputs, losses and metrics stay float32;
                                 # evaluation always runs float32). Slower on a CPU.
                                 # "float64" (with jax_enable_x64) serves exactness tests.

  # --- optimisation -------------------------------------------------------------------
  c.batch_size = 8               # global batch per optimizer micro-step (all devices)
  c.grad_accum_steps = 1         # micro-steps per update (effective batch = batch * this)
  c.num_train_steps = 1000       # micro-steps (= batches consumed)
  c.lr_encoder = 1e-3            # peak learning rate of the `encoder` subtree
  c.lr_decoder = 1e-2            # peak learning rate of everything else (decoder, heads)
  c.momentum = 0.9               # SGD momentum
  c.nesterov = False
  c.weight_decay = 1e-5          # L2 added to the gradient (PyTorch SGD weight_decay)
  c.schedule = "poly"            # "poly" | "step" | "constant"
  c.poly_power = 0.9             # lr * (1 - t / T) ** power
  c.step_boundaries = (0.5, 0.75)  # "step": fractions of the run where lr *= step_factor
  c.step_factor = 0.5
  c.warmup_steps = 0             # linear warmup (updates) before the schedule
  c.loss_weights = ml_collections.ConfigDict({"segm": 0.5, "depth": 0.5, "normals": 0.5})
  c.freeze_bn = False            # True: BN uses (and keeps) its running statistics
  c.sync_bn = True               # BN statistics over the global batch (N devices == 1)

  # --- run ----------------------------------------------------------------------------
  c.seed = 0                     # data order, augmentation and step rng
  c.log_every_steps = 20         # train metrics to metrics.jsonl / TensorBoard
  c.eval_every_steps = 500       # validation (0 = only at the end)
  c.checkpoint_every_steps = 500  # checkpoint cadence (also saved after each eval and at the end)
  c.keep_checkpoints = 2         # latest checkpoints kept (plus the best by `best_metric`)
  c.best_metric = "miou"         # validation metric ranking checkpoints
  c.best_mode = "max"            # "max" (miou, delta1) or "min" (rmse)
  c.num_devices = 0              # devices to use in each process (0 = all of them)
  c.distributed = False          # several processes: jax.distributed.initialize() (below)
  c.coordinator_address = ""     # "host:port" of process 0 ("" = auto-detect: SLURM, Open
                                 # MPI, Kubernetes, Cloud TPU, or JAX_COORDINATOR_ADDRESS)
  c.num_processes = 0            # processes in the run (0 = auto-detect)
  c.process_id = -1              # this process's index, 0..num_processes-1 (-1 = auto-detect)
  c.initialization_timeout = 300  # seconds to wait for every process to join
  c.heartbeat_timeout = 100      # seconds of silence after which a process counts as dead
                                 # and the others stop with an error instead of hanging
  c.progress_bar = True          # tqdm bar with loss and images/s
  c.resume_may_change = ()       # fields that may differ from the config recorded with the
                                 # checkpoint when a run resumes, e.g. ("num_train_steps",
                                 # "eval_every_steps"); "eval" covers eval.*. Any other
                                 # difference refuses to resume, naming the fields
                                 # (progress_bar, prefetch_to_device and the distributed
                                 # timeouts and address may always change).
                                 # Command line: --config.resume_may_change=num_train_steps

  # --- evaluation ---------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 8          # global (all processes; rounded up to a multiple of the
                                 # devices), padded with masked examples at the end
  c.eval.pad_to_multiple = 32    # pad images (ignore labels) to a multiple of this
  c.eval.min_depth = 1e-3        # valid ground truth > min_depth; predictions clipped to it
  c.eval.max_depth = 0.0         # cap (10 m NYUD, 80 m KITTI; 0 = none)
  c.eval.crop = "none"           # "none" | "garg" | "eigen" (KITTI) | "eigen_nyu"
  c.eval.num_samples = 4         # rows of eval/samples.png
  c.eval.max_examples = 0        # evaluate only the first N examples (0 = all)
  return c


def shrink(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A `runlocal`-style few-step version of a config, for smoke tests on a laptop."""
  c.batch_size = 4
  c.crop_size = (64, 96)
  c.num_devices = 1
  c.num_train_steps = 2
  c.warmup_steps = 0             # a few updates leave no room for a warmup (config_check)
  c.log_every_steps = 1
  c.eval_every_steps = 0
  c.checkpoint_every_steps = 2
  c.eval.batch_size = 2
  c.eval.max_examples = 2
  c.progress_bar = False
  return c
