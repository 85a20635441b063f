"""The export check on the SD 1.5 architecture (random weights from configs/sd15; no hub), timed on this machine.

1. One UNet pass with guidance (batch 2) at SD 1.5's own latent (64: 512 px) and at the check's (16: 128 px), three
   times each after one warm-up: what a render costs per step at either size.
2. The whole check as the app runs it now (`verify_export` of a diffusers-LoRA export: the stock child renders the
   base and the export, the app renders its own), timed once, with the renders' sizes and the check's figures.

Usage: taskset -c 0 python docs/export-check/sd15_time.py WORKDIR   (prints JSON lines; WORKDIR gets about 5 GB of weights)
"""

import json
import sys
import time
from pathlib import Path

import torch

from seiko_core import lora
from seiko_core.bench import build_sd15_arch
from seiko_core.config import FinetuneConfig
from seiko_core.export import export_diffusers_lora
from seiko_core.export_verify import CheckSettings, verify_export

work = Path(sys.argv[1])
torch.set_num_threads(1)  # one thread on one core (taskset -c 0): the other core is left to other work
parts = build_sd15_arch("cpu", seed=0, workdir=work / "tok")
unet = parts.unet
cond = torch.randn(2, 77, unet.config.cross_attention_dim)
for latent in (64, 16):
    x = torch.randn(2, 4, latent, latent)
    seconds = []
    with torch.no_grad():
        for i in range(4):
            t0 = time.perf_counter()
            unet(x, torch.tensor([500, 500]), encoder_hidden_states=cond)
            if i:
                seconds.append(round(time.perf_counter() - t0, 2))
    print(json.dumps({"unet_pass_with_guidance": {"latent": latent, "pixels": latent * 8, "seconds": seconds}}), flush=True)

base = work / "base"
parts.pipeline.register_modules(image_encoder=parts.image_encoder)
parts.pipeline.save_pretrained(base, safe_serialization=True)
lora.add_adapter(unet, "round_1", FinetuneConfig(lora_rank=4, lora_alpha=4.0))
g = torch.Generator().manual_seed(7)
with torch.no_grad():
    for name, p in unet.named_parameters():
        if ".round_1." in name and "lora_B" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
lora.save_adapter(unet, "round_1", work / "round_1")
del parts, unet
export = export_diffusers_lora(work / "round_1", work / "export", base_model=base)
settings = CheckSettings(base_model=str(base), prompt="a photo of a red circle", steps=10, guidance=7.5, eta=1.0)
t0 = time.perf_counter()
result = verify_export("lora", export.path, work / "round_1", settings)
print(json.dumps({"check": {"seconds": round(time.perf_counter() - t0, 1), "passed": result.passed,
                            "vs_base": result.vs_base.__dict__, "vs_app": result.vs_app.__dict__,
                            "settings": result.settings}}), flush=True)
