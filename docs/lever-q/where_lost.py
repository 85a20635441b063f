"""Where shape fidelity is lost on lever Q's prompt draw (BENCHMARKS.md), per shape and size.

The pixel reader on three sets of the same 480 prompts (seed 7): the drawn images; the drawn images through the VAE's
encode and decode (the best the decoder can give, whatever the UNet does); the generated images (30 DDIM steps,
guidance 7.5, eta 1, image seeds 30,000 on). Writes a sheet of the first 32 misread generated squares.

Usage: python docs/lever-q/where_lost.py MODEL_DIR OUT.png   (prints JSON lines)
"""

import collections
import json
import sys

import numpy as np
import torch
from PIL import Image

from seiko_core.models import load_model
from seiko_core.sampling import sample, to_uint8
from seiko_core.toy import dataset as ds
from seiko_core.toy import quality as q
from seiko_core.toy.pixels import read_batch

torch.set_num_threads(2)
parts = load_model(sys.argv[1], device="cpu")
prompts, specs = q.fidelity_prompts(480, seed=7)


def report(name: str, images: np.ndarray) -> list:
    rd = read_batch(images)
    by = collections.defaultdict(list)
    for r, s in zip(rd, specs, strict=True):
        for key in ("all", s.shape, f"{s.shape}/{s.size}"):
            by[key].append(r.shape == s.shape)
    print(json.dumps({name: {k: [round(float(np.mean(v)), 3), len(v)] for k, v in sorted(by.items())}}))
    misread = collections.Counter((s.shape, r.shape) for r, s in zip(rd, specs, strict=True) if r.shape != s.shape)
    print(json.dumps({f"{name}_misread": misread.most_common(8)}))
    return rd


drawn = np.stack([ds.render(s) for s in specs])
x = torch.from_numpy(drawn).permute(0, 3, 1, 2).float() / 127.5 - 1
with torch.no_grad():
    decoded = parts.vae.decode(parts.vae.encode(x).latent_dist.mean).sample
roundtrip = ((decoded.clamp(-1, 1) + 1) * 127.5 + 0.5).clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
report("drawn", drawn)
report("vae_roundtrip", roundtrip)
generated = to_uint8(sample(parts, prompts, list(range(30_000, 30_480)), steps=30, guidance=7.5, eta=1.0, batch_size=32))
rd = report("generated30", generated)

missed = [i for i, (r, s) in enumerate(zip(rd, specs, strict=True)) if s.shape == "square" and r.shape != "square"][:32]
sheet = Image.new("RGB", (96 * 8, 96 * max(1, (len(missed) + 7) // 8)))
for k, i in enumerate(missed):
    sheet.paste(Image.fromarray(generated[i]).resize((96, 96), Image.NEAREST), ((k % 8) * 96, (k // 8) * 96))
sheet.save(sys.argv[2])
print(json.dumps({"misread_squares": [[i, prompts[i], rd[i].shape] for i in missed]}))
