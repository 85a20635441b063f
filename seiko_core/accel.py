"""The process's accelerate ``Accelerator``, made once, and the two pieces of data parallelism the fine-tuning uses.

accelerate keeps its state in per-process singletons: a second ``Accelerator(mixed_precision=...)`` with another
value raises ``AcceleratorState has already been initialized``. A worker serves experiments with different
``finetune.mixed_precision`` in one process, so :func:`shared_accelerator` keeps one Accelerator per process and
makes a new one only when a call asks for another mixed precision: it then clears accelerate's
``AcceleratorState`` (mixed precision, plugins) but keeps its ``PartialState`` (the process group, the device),
so ranks of a process group stay connected. ``AcceleratorState._reset_state`` is accelerate's own (internal)
reset; pyproject.toml bounds accelerate (<1.16) and constraints.txt pins the tested version.

:func:`reduce_gradients` averages all LoRA gradients across ranks in ONE collective (one flat buffer) instead of
one per tensor (about 256 per step on SD 1.5's UNet).
"""

from __future__ import annotations

import logging
import threading

import torch

log = logging.getLogger(__name__)

_lock = threading.Lock()
_current = None  # the process's Accelerator
_current_key: tuple[str, bool] | None = None
_SCALER_START = "_seiko_scaler_start"  # attribute on an Accelerator: its loss scaler's state before any step

MIXED_PRECISION = ("no", "fp16", "bf16")


def shared_accelerator(mixed_precision: str = "no", *, cpu: bool = False):
    """This process's Accelerator for ``mixed_precision`` ("no", "fp16", "bf16"); made once per process and value.

    fp16 autocast is a GPU setting (the ``sd15`` preset's): on the CPU accelerate would accept it but run in fp32
    without saying so, and report "fp16". There it runs in fp32 ("no") openly: a warning says so and the returned
    Accelerator's ``mixed_precision`` is "no".
    """
    global _current, _current_key
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {mixed_precision!r}")
    if mixed_precision == "fp16" and cpu:
        log.warning("finetune.mixed_precision 'fp16' needs a GPU: on the CPU this fine-tuning runs in fp32")
        mixed_precision = "no"
    key = (mixed_precision, bool(cpu))
    with _lock:
        if _current is not None and _current_key == key:
            return _current
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state:  # another value (or someone else's Accelerator): keep the process group
            AcceleratorState._reset_state(reset_partial_state=False)
        acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
        if acc.scaler is not None:
            setattr(acc, _SCALER_START, acc.scaler.state_dict())
        _current, _current_key = acc, key
        return acc


def restart_loss_scale(acc) -> None:
    """Put the accelerator's fp16 loss scaler back to its starting scale, so one job's result does not depend on the
    jobs the process ran before (a re-run on another worker trains the same way). No-op without a scaler."""
    scaler = getattr(acc, "scaler", None)
    if scaler is None:
        return
    start = getattr(acc, _SCALER_START, None)
    if start is None:  # an Accelerator made elsewhere: remember where it stands now
        setattr(acc, _SCALER_START, scaler.state_dict())
        return
    scaler.load_state_dict(start)


def reduce_gradients(acc, params: list[torch.nn.Parameter]) -> None:
    """Average ``params``' gradients over the accelerator's processes in one collective on one flat buffer.

    A missing gradient counts as zeros (a rank whose graph did not reach a parameter still takes part). With one
    process nothing is done.
    """
    if acc.num_processes <= 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = acc.reduce(flat, reduction="mean")
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(g.dtype)
        offset += n
