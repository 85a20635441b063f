"""Is the textbook UCB bonus set by the data (sum f f^T) or by lambda (1e-3)? (a sixth review, 5 Dec 2026)
Shapes model, 32 and 128 images from the pretrained model, the purple oracle + noise 0.1, the shapes preset's reward
fit, the bonus at the preset's settings and with every feature scaled by s: the same predictions (the heads take 1/s),
so a bonus that counted rating stds whatever the features' scale would not move.
Run: HF_HUB_OFFLINE=1 .venv/bin/python docs/ucb-lambda/measure.py"""
import torch

from seiko_core.loop import generate_batch, round_prompts
from seiko_core.models import load_model
from seiko_core.optimism import LinearUCB, fit_bonus
from seiko_core.oracles import ORACLES
from seiko_core.presets import shapes
from seiko_core.reward import fit_reward

torch.set_num_threads(1)
cfg = shapes().for_method("ucb")
parts = load_model("models/shapes-sd", device="cpu")
N = 160
prompts = round_prompts(cfg, N, 0)
imgs, emb = generate_batch(parts, None, prompts, list(range(1000, 1000 + N)), cfg)
orc = ORACLES["purple"]
y_all = orc.fn(imgs, prompts) + 0.1 * torch.randn(N, generator=torch.Generator().manual_seed(0))
new = emb[128:]
for n in (32, 128):
    fit = fit_reward(emb[:n], y_all[:n], cfg.reward, seed=3)
    ens = fit.ensemble
    ucb = fit_bonus(ens, emb[:n], cfg.optimism)
    with torch.no_grad():
        f = ens.features(emb[:n]).double()
        fn = ens.features(new).double()
    ev = torch.linalg.eigvalsh(f.T @ f)
    b = ucb.bonus(fn.float()) / ucb.scale
    print(f"n={n}: y_std {float(ens.y_std):.3f}; |f| mean {float(f.norm(dim=1).mean()):.3g}; eigenvalues of F^T F: min {float(ev.min()):.3g}, "
          f"median {float(ev.median()):.3g}, max {float(ev.max()):.3g}; #eig < 10*lambda: {int((ev < 1e-2).sum())} of {len(ev)}")
    print(f"   bonus on new images (rating stds): mean {float(b.mean()):.3f}; on D: {float((ucb.bonus(f.float()) / ucb.scale).mean()):.3f}")
    for s in (0.1, 10.0):
        u2 = LinearUCB.fit(f * s, form="textbook", lam=cfg.optimism.bonus_lambda, alpha=ucb.alpha, clip=ucb.clip)
        print(f"   features x{s}: bonus on new images mean {float(u2.bonus((fn * s).float()).mean()):.3f}")
    for s in (1.0, 0.1, 10.0):
        u3 = LinearUCB.fit(f * s, form="covariance", lam=cfg.optimism.bonus_lambda, alpha=0.125, clip=1e9)
        ec = torch.linalg.eigvalsh(torch.cov(f.T, correction=0) * s * s)
        print(f"   covariance form, features x{s}: bonus on new images mean {float(u3.bonus((fn * s).float()).mean()):.3f}; #eig(Cov) < 10*lambda {int((ec < 1e-2).sum())} of 16")
