import collections, json, sys
import numpy as np, torch
from seiko_core.models import load_model
from seiko_core.sampling import sample, to_uint8
from seiko_core.toy import quality as q
from seiko_core.toy.pixels import read_batch
torch.set_num_threads(2)
parts = load_model(sys.argv[1], device="cpu")
prompts, specs = q.fidelity_prompts(192, seed=1)
out = {}
for steps in (30, 10):
    rd = read_batch(to_uint8(sample(parts, prompts, list(range(10_000, 10_192)), steps=steps, guidance=7.5, eta=1.0, batch_size=32)))
    by = collections.defaultdict(list)
    for r, s in zip(rd, specs):
        by[s.shape].append(r.shape == s.shape); by[s.size].append(r.shape == s.shape)
        by["all"].append(r.shape == s.shape); by["colour"].append(r.color == s.color); by["background"].append(r.background == s.background)
    out[steps] = {k: round(float(np.mean(v)), 3) for k, v in by.items()}
    out[f"{steps}_n"] = {k: len(v) for k, v in by.items()}
    out[f"{steps}_misread"] = [list(map(str, k)) + [v] for k, v in collections.Counter((s.shape, r.shape) for r, s in zip(rd, specs) if r.shape != s.shape).most_common(6)]
print(json.dumps({"model": sys.argv[1], **{str(k): v for k, v in out.items()}}))
# what a short prompt draws: the shape frequencies of 192 samples of "a shape" and of "a purple shape" at the app's 10 steps
for prompt in ("a shape", "a purple shape"):
    rd = read_batch(to_uint8(sample(parts, [prompt] * 192, list(range(20_000, 20_192)), steps=10, guidance=7.5, eta=1.0, batch_size=32)))
    c = collections.Counter(r.shape for r in rd)
    print(json.dumps({"model": sys.argv[1], "prompt": prompt, "shapes": dict(c.most_common()),
                      "colours": dict(collections.Counter(r.color for r in rd).most_common())}))
