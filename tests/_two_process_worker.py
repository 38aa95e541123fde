"""One of two local processes fitting a small trainer data-parallel (``tests/test_distributed_processes.py``).

``python tests/_two_process_worker.py PROCESS_ID PORT OUT_DIR MODE`` joins a
two-process run on ``127.0.0.1:PORT`` (gloo collectives, two forced host
devices per process: a 4-device ``"data"`` mesh), feeds ITS half of each
global batch (rows ``[8 * id, 8 * id + 8)`` of 16), fits 4 steps, saves a
checkpoint (every process takes part) and, on process 0, writes the final
parameters to ``OUT_DIR/params.npz``.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from artifex_rl.distributed import initialize, is_main_process, make_mesh  # noqa: E402

GLOBAL_ROWS, STEPS = 16, 4


def main(process_id: int, port: int, out_dir: str, mode: str) -> None:
    assert initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    assert jax.process_count() == 2 and jax.device_count() == 4, jax.devices()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import optax
    from flax import nnx

    from artifex_rl import TrainerConfig
    from tests._models import RegressionTrainer, TinyMLP, regression_batches

    model = TinyMLP(4, 16, 1, rngs=nnx.Rngs(0))  # the same initial model in every process
    trainer = RegressionTrainer(model, optax.adam(1e-2), TrainerConfig(param_sharding=mode), mesh=make_mesh())
    half = GLOBAL_ROWS // 2
    rows = slice(process_id * half, (process_id + 1) * half)
    local = [{k: v[rows] for k, v in b.items()} for b in regression_batches(STEPS, GLOBAL_ROWS, in_dim=4)]
    trainer.fit(local, max_steps=STEPS)
    assert trainer.global_step == STEPS
    params = multihost_utils.process_allgather(trainer.train_state["params"], tiled=True)
    trainer.save_checkpoint(os.path.join(out_dir, "ckpt"))
    if is_main_process():
        flat = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
        np.savez(os.path.join(out_dir, "params.npz"), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
