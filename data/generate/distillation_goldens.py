#!/usr/bin/python3
"""PyTorch's reference for qforge's distillation loss (kernels/softmax.h distillation_kl) and for
a classifier step that mixes it with the cross-entropy (runtime/training.h ClassifierLoss).

Written to data/golden/distill/:
  kernel.npz  student and teacher logits (7 x 13, float32, seeded) and, for each case
              "<T>" (T^2 factor) or "<T>_plain" (no factor), "loss/<case>" and "grad/<case>":
                  F.kl_div(F.log_softmax(s / T), F.softmax(t / T), reduction="batchmean") * T^2
              and its gradient with respect to the student logits s, computed by autograd;
              "labels" (7, int64, seeded apart) and, for each label smoothing ε in
              LABEL_SMOOTHING, "ce_loss/<ε>" and "ce_grad/<ε>":
                  F.cross_entropy(s, labels, label_smoothing=ε) and its gradient.
  resnet_bn_grads.npz
              the bundled ResNet (weights read from data/models/resnet_bn.onnx as
              grad_goldens.py reads them) on data/golden/grad/batch_input.npy and its labels:
              "teacher_logits", the model's eval-mode output (BN on running statistics), the
              teacher as `qforge qat --distill` computes it; then one training-mode forward
              (BN on batch statistics) and backward of
                  (1 - W) * F.cross_entropy(z, y, label_smoothing=E)
                  + W * KL(teacher || z) at temperature T * T^2
              with W = 0.7, T = 2, E = 0.1: "loss" and each parameter's gradient by ONNX initializer name.
  settings.json  the cases, T, W and the torch version.
Run: /usr/bin/python3 data/generate/distillation_goldens.py (seconds).
"""
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import grad_goldens  # noqa: E402
from train_export import GOLDEN_DIR, MODELS_DIR  # noqa: E402

OUT_DIR = os.path.join(GOLDEN_DIR, "distill")
KERNEL_SHAPE = (7, 13)
KERNEL_CASES = [(1.0, True), (4.0, True), (2.5, False)]  # (temperature, times T^2)
MODEL_FAMILY = "resnet"
MODEL_TEMPERATURE = 2.0
MODEL_WEIGHT = 0.7
MODEL_LABEL_SMOOTHING = 0.1
LABEL_SMOOTHING = [0.0, 0.1, 0.35]


def case_name(t, squared):
    return ("%g" % t) + ("" if squared else "_plain")


def distillation(student, teacher, t, squared):
    loss = F.kl_div(F.log_softmax(student / t, dim=1), F.softmax(teacher / t, dim=1),
                    reduction="batchmean")
    return loss * (t * t) if squared else loss


def kernel_goldens():
    gen = torch.Generator().manual_seed(0)
    student = (torch.randn(KERNEL_SHAPE, generator=gen) * 4).to(torch.float32)
    teacher = (torch.randn(KERNEL_SHAPE, generator=gen) * 4).to(torch.float32)
    out = {"student": student.numpy(), "teacher": teacher.numpy()}
    for t, squared in KERNEL_CASES:
        s = student.clone().requires_grad_(True)
        loss = distillation(s, teacher, t, squared)
        loss.backward()
        name = case_name(t, squared)
        out["loss/" + name] = np.array(loss.item(), dtype=np.float32)
        out["grad/" + name] = s.grad.numpy().astype(np.float32)
    # Drawn from a generator of their own, so the cases above keep their values.
    labels = torch.randint(0, KERNEL_SHAPE[1], (KERNEL_SHAPE[0],),
                           generator=torch.Generator().manual_seed(1))
    out["labels"] = labels.numpy().astype(np.int64)
    for eps in LABEL_SMOOTHING:
        s = student.clone().requires_grad_(True)
        loss = F.cross_entropy(s, labels, label_smoothing=eps)
        loss.backward()
        out["ce_loss/%g" % eps] = np.array(loss.item(), dtype=np.float32)
        out["ce_grad/%g" % eps] = s.grad.numpy().astype(np.float32)
    return out


def model_goldens():
    x = torch.from_numpy(np.load(os.path.join(GOLDEN_DIR, "grad", "batch_input.npy")))
    y = torch.from_numpy(np.load(os.path.join(GOLDEN_DIR, "grad", "batch_labels.npy")))
    model, _ = grad_goldens.build_from_onnx(MODEL_FAMILY)
    model.eval()
    with torch.no_grad():
        teacher = model(x)
    model.train()
    model.zero_grad()
    z = model(x)
    ce = F.cross_entropy(z, y, label_smoothing=MODEL_LABEL_SMOOTHING)
    loss = ((1 - MODEL_WEIGHT) * ce +
            MODEL_WEIGHT * distillation(z, teacher, MODEL_TEMPERATURE, True))
    loss.backward()
    initializers = grad_goldens.read_initializers(
        os.path.join(MODELS_DIR, "%s_bn.onnx" % MODEL_FAMILY))
    out = {"loss": np.array(loss.item(), dtype=np.float32),
           "teacher_logits": teacher.numpy().astype(np.float32)}
    taken = {}
    for torch_name, p in model.named_parameters():
        value = p.detach().numpy()
        name, transposed = grad_goldens.onnx_name_of(torch_name, value, initializers, taken)
        grad = p.grad.detach().numpy()
        out[name] = np.ascontiguousarray(grad.T if transposed else grad, dtype=np.float32)
        taken[name] = torch_name
    return out


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    os.makedirs(OUT_DIR, exist_ok=True)
    np.savez(os.path.join(OUT_DIR, "kernel.npz"), **kernel_goldens())
    grads = model_goldens()
    np.savez(os.path.join(OUT_DIR, "%s_bn_grads.npz" % MODEL_FAMILY), **grads)
    settings = dict(torch=torch.__version__,
                    kernel=dict(shape=list(KERNEL_SHAPE),
                                cases=[dict(name=case_name(t, s), temperature=t,
                                            scale_by_temperature_squared=s)
                                       for t, s in KERNEL_CASES],
                                label_smoothing=LABEL_SMOOTHING),
                    model=dict(family=MODEL_FAMILY, temperature=MODEL_TEMPERATURE,
                               distill_weight=MODEL_WEIGHT,
                               label_smoothing=MODEL_LABEL_SMOOTHING))
    with open(os.path.join(OUT_DIR, "settings.json"), "w") as f:
        json.dump(settings, f, indent=2)
        f.write("\n")
    print("kernel: %d cases; %s: loss %.6f, %d gradients"
          % (len(KERNEL_CASES), MODEL_FAMILY, float(grads["loss"]), len(grads) - 2))


if __name__ == "__main__":
    main()
