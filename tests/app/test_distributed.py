"""Data-parallel fine-tuning under `accelerate launch`: two CPU processes (gloo) end with identical adapters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from seiko_core.checkpoint import verify

REPO = Path(__file__).resolve().parents[2]


def test_two_processes_train_one_identical_adapter(worker_model_dir, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    out = tmp_path / "round_1"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "scripts/distributed_demo.py", "--cpu", "--expect-processes", "2", "--model", str(worker_model_dir),
           "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK: 2 processes (cpu)" in proc.stdout and "identical adapter checksum" in proc.stdout, proc.stdout
    assert verify(out)["adapter"] == "round_1"


def test_the_demo_builds_its_own_model_on_every_rank(tmp_path):
    """Without --model the tiny model was built after the process group formed, and transformers then wrote its
    weights on rank 0 only: rank 1 failed with "no file named model.safetensors". Found by review."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "scripts/distributed_demo.py", "--cpu", "--expect-processes", "2"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "OK: 2 processes (cpu)" in proc.stdout, proc.stdout
