#!/usr/bin/python3
"""PyTorch's reference trajectories for qforge's optimizers (quant/optimizer.h) and
learning-rate schedule (quant/lr_schedule.h).

Four parameters of odd shapes (a conv weight, a BatchNorm scale, a linear weight and its bias)
start from fixed values and take STEPS steps with fixed gradients, all drawn from a seeded
generator and stored, with
  * torch.optim.SGD (momentum, Nesterov, weight decay) and
  * torch.optim.AdamW (weight decay),
both through the single-tensor path (foreach=False), with two parameter groups: the 1-D
tensors (BatchNorm scale, bias) without weight decay, the others with it, as qforge's
is_vector_parameter exclusion does. Before each step every group's lr is set to the cosine
schedule with linear warmup, written here with the formula and operation order of
quant/lr_schedule.cpp:
    step s < W:  base_lr * (s + 1) / W
    otherwise:   base_lr * (1 + cos(pi * t / T)) / 2,   t = s - W, T = TOTAL - W
(torch's CosineAnnealingLR closed form with eta_min 0, after the warmup).

Written to data/golden/optim/:
  trajectory.npz  "initial/<name>", "grad/<step>/<name>"
  sgd.npz         "param/<step>/<name>" after each step, and the final state
                  "momentum_buffer/<name>"
  adamw.npz       "param/<step>/<name>" after each step, and the final state
                  "exp_avg/<name>", "exp_avg_sq/<name>", "step/<name>" (int64)
  settings.json   the shapes, hyperparameters, schedule and each step's lr (exact doubles)
State keys are those of qforge's Optimizer::state().
Run: /usr/bin/python3 data/generate/optimizer_goldens.py (a second).
"""
import json
import math
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "..", "golden", "optim")

STEPS = 10
WARMUP = 3
SHAPES = {  # name -> shape, in the order the C++ test lists its parameters
    "conv.weight": (5, 3, 3, 3),
    "bn.weight": (5,),
    "fc.weight": (11, 13),
    "fc.bias": (11,),
}
SGD = dict(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, nesterov=True)
ADAMW = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)


def cosine_lr(base_lr, step, warmup, total):
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = step - warmup
    period = total - warmup
    if t >= period:
        return 0.0
    return base_lr * (1.0 + math.cos(math.pi * t / period)) / 2.0


def no_decay(shape):
    return len(shape) <= 1


def make_data():
    gen = torch.Generator().manual_seed(0)
    initial = {}
    for name, shape in SHAPES.items():
        value = torch.randn(shape, generator=gen) * 0.5
        if name == "bn.weight":
            value = value * 0.2 + 1.0
        initial[name] = value.to(torch.float32)
    grads = [{name: torch.randn(shape, generator=gen) * 0.1 for name, shape in SHAPES.items()}
             for _ in range(STEPS)]
    return initial, grads


def groups(params, weight_decay):
    decay = [p for name, p in params.items() if not no_decay(SHAPES[name])]
    rest = [p for name, p in params.items() if no_decay(SHAPES[name])]
    return [dict(params=decay, weight_decay=weight_decay), dict(params=rest, weight_decay=0.0)]


def run(make_optimizer, base_lr, initial, grads):
    params = {name: torch.nn.Parameter(value.clone()) for name, value in initial.items()}
    opt = make_optimizer(params)
    out, lrs = {}, []
    for step in range(STEPS):
        lr = cosine_lr(base_lr, step, WARMUP, STEPS)
        lrs.append(lr)
        for group in opt.param_groups:
            group["lr"] = lr
        for name, p in params.items():
            p.grad = grads[step][name].clone()
        opt.step()
        for name, p in params.items():
            out["param/%d/%s" % (step, name)] = p.detach().numpy().copy()
    return params, opt, out, lrs


def main():
    torch.set_num_threads(1)
    initial, grads = make_data()
    os.makedirs(OUT_DIR, exist_ok=True)
    trajectory = {"initial/" + n: v.numpy() for n, v in initial.items()}
    for step, g in enumerate(grads):
        trajectory.update({"grad/%d/%s" % (step, n): v.numpy() for n, v in g.items()})
    np.savez(os.path.join(OUT_DIR, "trajectory.npz"), **trajectory)

    def make_sgd(params):
        return torch.optim.SGD(groups(params, SGD["weight_decay"]), lr=SGD["lr"],
                               momentum=SGD["momentum"], dampening=SGD["dampening"],
                               nesterov=SGD["nesterov"], foreach=False)

    params, opt, sgd, sgd_lrs = run(make_sgd, SGD["lr"], initial, grads)
    for name, p in params.items():
        sgd["momentum_buffer/" + name] = opt.state[p]["momentum_buffer"].numpy()
    np.savez(os.path.join(OUT_DIR, "sgd.npz"), **sgd)

    def make_adamw(params):
        return torch.optim.AdamW(groups(params, ADAMW["weight_decay"]), lr=ADAMW["lr"],
                                 betas=ADAMW["betas"], eps=ADAMW["eps"], amsgrad=False,
                                 maximize=False, foreach=False)

    params, opt, adamw, adamw_lrs = run(make_adamw, ADAMW["lr"], initial, grads)
    for name, p in params.items():
        state = opt.state[p]
        adamw["exp_avg/" + name] = state["exp_avg"].numpy()
        adamw["exp_avg_sq/" + name] = state["exp_avg_sq"].numpy()
        adamw["step/" + name] = np.array(int(state["step"].item()), dtype=np.int64)
    np.savez(os.path.join(OUT_DIR, "adamw.npz"), **adamw)

    settings = dict(
        torch=torch.__version__, steps=STEPS,
        parameters=[dict(name=n, shape=list(s), weight_decay=not no_decay(s))
                    for n, s in SHAPES.items()],
        schedule=dict(decay="cosine", warmup_steps=WARMUP, total_steps=STEPS),
        sgd=dict(SGD, lrs=sgd_lrs),
        adamw=dict(lr=ADAMW["lr"], beta1=ADAMW["betas"][0], beta2=ADAMW["betas"][1],
                   eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"], lrs=adamw_lrs))
    with open(os.path.join(OUT_DIR, "settings.json"), "w") as f:
        json.dump(settings, f, indent=2)
        f.write("\n")
    last = STEPS - 1
    print("SGD: fc.weight[0,0] %.6f -> %.6f; AdamW: %.6f -> %.6f" % (
        initial["fc.weight"][0, 0], sgd["param/%d/fc.weight" % last][0, 0],
        initial["fc.weight"][0, 0], adamw["param/%d/fc.weight" % last][0, 0]))


if __name__ == "__main__":
    sys.exit(main())
