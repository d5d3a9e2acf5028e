"""A small text encoder with token ids and an attention mask as inputs, for tests/tools/text_cli_test.cpp.

BERT-style: token and position embeddings, LayerNorm, two post-norm encoder layers
(nn.TransformerEncoderLayer: multi-head attention over the tokens with the padding masked, GELU
MLP) and a linear head on the first token. torch.onnx writes it at opset 17 with two int64
inputs, `input_ids` [batch, 12] and `attention_mask` [batch, 12] (1 for a token, 0 for padding,
as tokenizers write it): the embeddings are Gathers of the token ids, and the mask becomes the
attention's additive -inf through Equal, Where and a Reshape of the batch times the heads.

Writes data/models/text/text_encoder_opset17.onnx and data/golden/text/: text_inputs.npz (the
two inputs of 16 samples of 4 to 12 tokens each, padded with id 0, and their class labels as
'labels'), text_output.npy
(PyTorch's logits), text_labels.npy and text_encoder_opset17_grads.npz (the mean cross-entropy on
those labels and the gradient of every initializer that is a PyTorch parameter, by name, or by
value transposed for MatMul weights). Seeded; run:
    /usr/bin/python3 data/generate/text_models.py
"""
import os

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, "..", "models", "text")
GOLDEN = os.path.join(HERE, "..", "golden", "text")
SAMPLES = 16
VOCAB = 50
TOKENS = 12
WIDTH = 32
CLASSES = 4


class TextEncoder(nn.Module):
    def __init__(self, layers=2, heads=4, hidden=64):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Parameter(torch.randn(1, TOKENS, WIDTH) * 0.1)
        self.norm = nn.LayerNorm(WIDTH)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(WIDTH, heads, hidden, dropout=0.0, activation="gelu",
                                       batch_first=True) for _ in range(layers)])
        self.head = nn.Linear(WIDTH, CLASSES)

    def forward(self, input_ids, attention_mask):
        x = self.norm(self.tokens(input_ids) + self.positions)
        padding = attention_mask == 0
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
        return self.head(x[:, 0])


def save_gradients(module, inputs, labels, onnx_path):
    """PyTorch's mean cross-entropy and parameter gradients, keyed by the ONNX initializers."""
    module.zero_grad()
    loss = F.cross_entropy(module(*inputs), labels)
    loss.backward()
    params = dict(module.named_parameters())
    grads = {"loss": np.float32(loss.item())}
    for init in onnx.load(onnx_path).graph.initializer:
        value = numpy_helper.to_array(init)
        if init.name in params:
            assert np.array_equal(value, params[init.name].detach().numpy()), init.name
            grads[init.name] = params[init.name].grad.numpy()
            continue
        for p in params.values():
            w = p.detach().numpy()
            if w.ndim == 2 and w.T.shape == value.shape and np.array_equal(w.T, value):
                grads[init.name] = p.grad.numpy().T
    name = os.path.basename(onnx_path).replace(".onnx", "_grads.npz")
    np.savez(os.path.join(GOLDEN, name), **{k: np.array(v, np.float32, order="C")
                                            for k, v in grads.items()})
    return len(grads) - 1


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    os.makedirs(MODELS, exist_ok=True)
    os.makedirs(GOLDEN, exist_ok=True)
    model = TextEncoder()
    generator = torch.Generator().manual_seed(1)
    # Every parameter distinct: torch.onnx writes parameters of equal values (LayerNorm's ones,
    # zero biases) as one shared initializer, which would tie them in training.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    lengths = torch.randint(4, TOKENS + 1, (SAMPLES,), generator=generator)
    ids = torch.randint(1, VOCAB, (SAMPLES, TOKENS), generator=generator)
    mask = (torch.arange(TOKENS)[None, :] < lengths[:, None]).to(torch.int64)
    ids = ids * mask  # padding is token 0
    labels = torch.arange(SAMPLES) % CLASSES
    # The inputs and, as qforge reads an .npz of training data, their class labels.
    np.savez(os.path.join(GOLDEN, "text_inputs.npz"), input_ids=ids.numpy(),
             attention_mask=mask.numpy(), labels=labels.numpy().astype(np.int64))
    # Training mode (no dropout) takes PyTorch's plain attention path; in eval mode it would
    # run its fused kernels on nested tensors, which compute the same in another order.
    model.train()
    with torch.no_grad():
        np.save(os.path.join(GOLDEN, "text_output.npy"), model(ids, mask).numpy())
    path = os.path.join(MODELS, "text_encoder_opset17.onnx")
    model.eval()
    torch.onnx.export(model, (ids, mask), path, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], opset_version=17,
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"},
                                    "logits": {0: "batch"}})
    np.save(os.path.join(GOLDEN, "text_labels.npy"), labels.numpy().astype(np.int64))
    model.train()
    count = save_gradients(model, (ids, mask), labels, path)
    assert count == len(list(model.parameters())), count


if __name__ == "__main__":
    main()
