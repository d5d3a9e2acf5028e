"""Small text encoders and decoders with token ids and an attention mask as inputs, for
tests/tools/text_cli_test.cpp.

BERT-style: token and position embeddings, LayerNorm, two post-norm encoder layers
(nn.TransformerEncoderLayer: multi-head attention over the tokens with the padding masked, GELU
MLP) and a linear head on the first token. torch.onnx writes it at opset 17 with two int64
inputs, `input_ids` [batch, 12] and `attention_mask` [batch, 12] (1 for a token, 0 for padding,
as tokenizers write it): the embeddings are Gathers of the token ids, and the mask becomes the
attention's additive -inf through Equal, Where and a Reshape of the batch times the heads.

The same layers as Hugging Face's BERT modeling code writes them (bert_style: separate query,
key and value Linears, scores divided by sqrt(head size), the mask made additive with float32's
lowest value, token-type embeddings as a third input, a tanh pooler) are exported at opset 14,
where LayerNorm is written out, with the sequence length dynamic.

RoBERTa's form (roberta_style, opset 14) pads with id 1 and counts its position ids over the
real tokens with a running sum of the mask (CumSum).

After them, each at opset 14 with the batch and the sequence dynamic (export_text_model):
Llama's decoder and GPT-2's on the tokens padded on the left, CLIP's text encoder (one input),
T5's encoder and DeBERTa's (disentangled attention: relative positions log-bucketed and gathered
with torch.gather).

Writes data/models/text/text_encoder_opset17.onnx, bert_style_opset14.onnx,
roberta_style_opset14.onnx, llama_style_, gpt2_style_, clip_style_, t5_style_ and
deberta_style_opset14.onnx and data/golden/text/: text_inputs.npz (the
two inputs of 16 samples of 4 to 12 tokens each, padded with id 0, and their class labels as
'labels'), text_output.npy
(PyTorch's logits), text_labels.npy and text_encoder_opset17_grads.npz (the mean cross-entropy on
those labels and the gradient of every initializer that is a PyTorch parameter, by name, or by
value transposed for MatMul weights); bert_style_inputs.npz (the same ids, mask and labels, and
token types), bert_style_output.npy and bert_style_opset14_grads.npz; roberta_style_inputs.npz
(the same tokens moved to ids 2 and up, padded with 1), roberta_style_output.npy and
roberta_style_opset14_grads.npz; and <family>_inputs.npz where a family reads other tokens,
<family>_output.npy and <family>_opset14_grads.npz for the others. Seeded; run:
    /usr/bin/python3 data/generate/text_models.py
"""
import math
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from opset_models import save_gradients

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


class BertLayer(nn.Module):
    """A Hugging Face BERT layer as its modeling code writes it: separate query, key and value
    projections, heads by view and permute, scores divided by sqrt(head size), an additive mask."""

    def __init__(self, heads=4, hidden=64):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(WIDTH, WIDTH)
        self.key = nn.Linear(WIDTH, WIDTH)
        self.value = nn.Linear(WIDTH, WIDTH)
        self.output = nn.Linear(WIDTH, WIDTH)
        self.attention_norm = nn.LayerNorm(WIDTH, eps=1e-12)
        self.intermediate = nn.Linear(WIDTH, hidden)
        self.out = nn.Linear(hidden, WIDTH)
        self.output_norm = nn.LayerNorm(WIDTH, eps=1e-12)

    def split_heads(self, x):
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.heads, WIDTH // self.heads).permute(0, 2, 1, 3)

    def forward(self, x, additive_mask):
        q = self.split_heads(self.query(x))
        k = self.split_heads(self.key(x))
        v = self.split_heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(WIDTH // self.heads)
        probabilities = (scores + additive_mask).softmax(-1)
        context = torch.matmul(probabilities, v).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.size(0), context.size(1), WIDTH)
        x = self.attention_norm(x + self.output(context))
        return self.output_norm(x + self.out(F.gelu(self.intermediate(x))))


class BertStyle(nn.Module):
    """Token, position and token-type embeddings, two BertLayers and a tanh pooler on the first
    token, with three int64 inputs and the mask made additive as Hugging Face does
    ((1 - mask) · float32's lowest)."""

    def __init__(self, layers=2):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Embedding(TOKENS, WIDTH)
        self.token_types = nn.Embedding(2, WIDTH)
        self.norm = nn.LayerNorm(WIDTH, eps=1e-12)
        self.register_buffer("position_ids", torch.arange(TOKENS).expand(1, -1))
        self.layers = nn.ModuleList([BertLayer() for _ in range(layers)])
        self.pooler = nn.Linear(WIDTH, WIDTH)
        self.classifier = nn.Linear(WIDTH, CLASSES)

    def forward(self, input_ids, attention_mask, token_type_ids):
        tokens = input_ids.shape[1]
        x = self.norm(self.tokens(input_ids) + self.positions(self.position_ids[:, :tokens]) +
                      self.token_types(token_type_ids))
        additive_mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * \
            torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, additive_mask)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


class RobertaStyle(nn.Module):
    """RoBERTa's form: padding id 1, position ids counted over the real tokens (the running
    sum of the non-padding mask, times it, plus the padding id: CumSum), one token type, the
    BertLayers, and its classification head (dense, tanh, projection) on the first token."""

    def __init__(self, layers=2):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH, padding_idx=1)
        self.positions = nn.Embedding(TOKENS + 2, WIDTH, padding_idx=1)
        self.token_types = nn.Embedding(1, WIDTH)
        self.norm = nn.LayerNorm(WIDTH, eps=1e-5)
        self.layers = nn.ModuleList([BertLayer() for _ in range(layers)])
        self.dense = nn.Linear(WIDTH, WIDTH)
        self.out_proj = nn.Linear(WIDTH, CLASSES)

    def forward(self, input_ids, attention_mask):
        real = input_ids.ne(1).int()
        position_ids = (torch.cumsum(real, dim=1).type_as(real) * real).long() + 1
        x = self.norm(self.tokens(input_ids) + self.positions(position_ids) +
                      self.token_types(torch.zeros_like(input_ids)))
        additive_mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * \
            torch.finfo(torch.float32).min
        for layer in self.layers:
            x = layer(x, additive_mask)
        return self.out_proj(torch.tanh(self.dense(x[:, 0])))


class RmsNorm(nn.Module):
    """Llama's RMSNorm as its modeling code writes it: the mean square, rsqrt, the weight."""

    def __init__(self, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(WIDTH))
        self.eps = eps

    def forward(self, x):
        variance = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaLayer(nn.Module):
    """A Llama decoder layer as Hugging Face's modeling code writes it: RMSNorm before the
    attention and the MLP, query, key and value Linears without biases and with fewer key and
    value heads than query heads (grouped-query attention, the keys and values repeated by expand
    and reshape), rotary position embeddings from cos and sin caches sliced to the sequence and
    squeezed (torch.onnx writes an If for each squeeze of a dim it cannot prove is 1), scores
    divided by sqrt(head size), a softmax computed in float32 (a Cast) and a SwiGLU MLP."""

    def __init__(self, heads=4, kv_heads=2, hidden=64, cache=64):
        super().__init__()
        self.heads, self.kv_heads, self.head_size = heads, kv_heads, WIDTH // heads
        self.q_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.k_proj = nn.Linear(WIDTH, kv_heads * self.head_size, bias=False)
        self.v_proj = nn.Linear(WIDTH, kv_heads * self.head_size, bias=False)
        self.o_proj = nn.Linear(WIDTH, WIDTH, bias=False)
        self.input_layernorm = RmsNorm()
        self.post_attention_layernorm = RmsNorm()
        self.gate_proj = nn.Linear(WIDTH, hidden, bias=False)
        self.up_proj = nn.Linear(WIDTH, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, WIDTH, bias=False)
        inverse = 1.0 / (10000 ** (torch.arange(0, self.head_size, 2).float() / self.head_size))
        angles = torch.outer(torch.arange(cache).float(), inverse)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos_cached", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin_cached", angles.sin()[None, None], persistent=False)

    def heads_of(self, x, heads):
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, heads, self.head_size).transpose(1, 2)

    def repeat_kv(self, x):
        batch, heads, tokens, size = x.shape
        groups = self.heads // heads
        x = x[:, :, None, :, :].expand(batch, heads, groups, tokens, size)
        return x.reshape(batch, heads * groups, tokens, size)

    def forward(self, x, additive_mask, position_ids):
        batch, tokens, _ = x.shape
        h = self.input_layernorm(x)
        q = self.heads_of(self.q_proj(h), self.heads)
        k = self.heads_of(self.k_proj(h), self.kv_heads)
        v = self.heads_of(self.v_proj(h), self.kv_heads)
        cos = self.cos_cached[:, :, :tokens].squeeze(1).squeeze(0)[position_ids].unsqueeze(1)
        sin = self.sin_cached[:, :, :tokens].squeeze(1).squeeze(0)[position_ids].unsqueeze(1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = self.repeat_kv(k), self.repeat_kv(v)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_size) + additive_mask
        probabilities = F.softmax(scores, dim=-1, dtype=torch.float32)
        context = torch.matmul(probabilities, v).transpose(1, 2).reshape(batch, tokens, WIDTH)
        x = x + self.o_proj(context)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class LlamaStyle(nn.Module):
    """A decoder classifier in Llama's form: token embeddings, two LlamaLayers under a causal
    mask (torch.triu of a matrix of float32's lowest: Trilu) joined with the padding mask of the
    left-padded tokens, a final RMSNorm and a Linear head on the last token."""

    def __init__(self, layers=2):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, WIDTH)
        self.layers = nn.ModuleList([LlamaLayer() for _ in range(layers)])
        self.norm = RmsNorm()
        self.score = nn.Linear(WIDTH, CLASSES, bias=False)

    def forward(self, input_ids, attention_mask):
        batch, tokens = input_ids.shape
        lowest = torch.finfo(torch.float32).min
        causal = torch.full((tokens, tokens), lowest).triu(1)[None, None]
        padding = attention_mask[:, None, None, :] == 0
        additive_mask = causal.masked_fill(padding, lowest)
        position_ids = torch.arange(tokens)[None, :].expand(batch, tokens)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, additive_mask, position_ids)
        return self.score(self.norm(x)[:, -1])


class Conv1D(nn.Module):
    """GPT-2's linear layer: addmm of the rows flattened to 2-D by a [in, out] weight."""

    def __init__(self, outputs, inputs):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inputs, outputs) * 0.1)
        self.bias = nn.Parameter(torch.zeros(outputs))
        self.outputs = outputs

    def forward(self, x):
        shape = x.size()[:-1] + (self.outputs,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(shape)


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Gpt2Block(nn.Module):
    """A GPT-2 block as Hugging Face's modeling code writes it: pre-norm LayerNorms, one Conv1D
    for query, key and value split in three, scores divided by sqrt(head size), the causal mask a
    slice of a lower-triangular buffer applied by torch.where(keep, scores, lowest), the padding
    mask added after it, the tanh GELU written out."""

    def __init__(self, heads=4, cache=64):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(WIDTH)
        self.c_attn = Conv1D(3 * WIDTH, WIDTH)
        self.c_proj = Conv1D(WIDTH, WIDTH)
        self.ln_2 = nn.LayerNorm(WIDTH)
        self.c_fc = Conv1D(4 * WIDTH, WIDTH)
        self.mlp_proj = Conv1D(WIDTH, 4 * WIDTH)
        self.register_buffer(
            "bias", torch.tril(torch.ones((cache, cache), dtype=torch.bool))[None, None],
            persistent=False)

    def split_heads(self, x):
        return x.view(x.size()[:-1] + (self.heads, WIDTH // self.heads)).permute(0, 2, 1, 3)

    def forward(self, x, additive_mask):
        q, k, v = self.c_attn(self.ln_1(x)).split(WIDTH, dim=2)
        q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)
        scores = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], v.size(-1) ** 0.5)
        query_length, key_length = q.size(-2), k.size(-2)
        causal = self.bias[:, :, key_length - query_length:key_length, :key_length]
        lowest = torch.full([], torch.finfo(scores.dtype).min)
        scores = torch.where(causal, scores, lowest) + additive_mask
        context = torch.matmul(F.softmax(scores, dim=-1), v).permute(0, 2, 1, 3).contiguous()
        x = x + self.c_proj(context.view(context.size()[:-2] + (WIDTH,)))
        return x + self.mlp_proj(gelu_new(self.c_fc(self.ln_2(x))))


class Gpt2Style(nn.Module):
    """A GPT-2 classifier: token and position embeddings, two Gpt2Blocks, a final LayerNorm and
    a Linear head on the last of the left-padded tokens."""

    def __init__(self, layers=2):
        super().__init__()
        self.wte = nn.Embedding(VOCAB, WIDTH)
        self.wpe = nn.Embedding(TOKENS, WIDTH)
        self.h = nn.ModuleList([Gpt2Block() for _ in range(layers)])
        self.ln_f = nn.LayerNorm(WIDTH)
        self.score = nn.Linear(WIDTH, CLASSES, bias=False)

    def forward(self, input_ids, attention_mask):
        positions = torch.arange(0, input_ids.size(-1), dtype=torch.long)[None]
        additive_mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * \
            torch.finfo(torch.float32).min
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            x = block(x, additive_mask)
        return self.score(self.ln_f(x)[:, -1])


class ClipAttention(nn.Module):
    """CLIP's text attention as Hugging Face's modeling code writes it: the query scaled before
    the product, the batch and heads merged for bmm, viewed apart to add the causal mask and
    merged again for the softmax."""

    def __init__(self, heads=4):
        super().__init__()
        self.heads, self.head_size = heads, WIDTH // heads
        self.scale = self.head_size ** -0.5
        self.q_proj = nn.Linear(WIDTH, WIDTH)
        self.k_proj = nn.Linear(WIDTH, WIDTH)
        self.v_proj = nn.Linear(WIDTH, WIDTH)
        self.out_proj = nn.Linear(WIDTH, WIDTH)

    def merged_heads(self, x, batch, tokens):
        x = x.view(batch, tokens, self.heads, self.head_size).transpose(1, 2).contiguous()
        return x.view(batch * self.heads, tokens, self.head_size)

    def forward(self, x, causal_mask):
        batch, tokens, _ = x.shape
        q = self.merged_heads(self.q_proj(x) * self.scale, batch, tokens)
        k = self.merged_heads(self.k_proj(x), batch, tokens)
        v = self.merged_heads(self.v_proj(x), batch, tokens)
        scores = torch.bmm(q, k.transpose(1, 2)).view(batch, self.heads, tokens, tokens)
        scores = (scores + causal_mask).view(batch * self.heads, tokens, tokens)
        context = torch.bmm(F.softmax(scores, dim=-1), v)
        context = context.view(batch, self.heads, tokens, self.head_size).transpose(1, 2)
        return self.out_proj(context.reshape(batch, tokens, WIDTH))


class ClipLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(WIDTH)
        self.self_attn = ClipAttention()
        self.layer_norm2 = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, 4 * WIDTH)
        self.fc2 = nn.Linear(4 * WIDTH, WIDTH)

    def forward(self, x, causal_mask):
        x = x + self.self_attn(self.layer_norm1(x), causal_mask)
        h = self.fc1(self.layer_norm2(x))
        return x + self.fc2(h * torch.sigmoid(1.702 * h))  # quick GELU


class ClipStyle(nn.Module):
    """CLIP's text encoder (the text tower of Stable Diffusion's pipelines): token and position
    embeddings, a causal mask made with torch.empty(...).fill_(lowest).triu_(1) at the batch of
    the ids, pre-norm layers, a final LayerNorm, the end token pooled by the argmax of the int32
    ids (the largest id) with x[arange(B), idx], and a projection."""

    def __init__(self, layers=2):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB, WIDTH)
        self.position_embedding = nn.Embedding(TOKENS, WIDTH)
        self.register_buffer("position_ids", torch.arange(TOKENS).expand(1, -1))
        self.layers = nn.ModuleList([ClipLayer() for _ in range(layers)])
        self.final_layer_norm = nn.LayerNorm(WIDTH)
        self.text_projection = nn.Linear(WIDTH, CLASSES, bias=False)

    def forward(self, input_ids):
        batch, tokens = input_ids.shape
        x = self.token_embedding(input_ids) + \
            self.position_embedding(self.position_ids[:, :tokens])
        mask = torch.empty(batch, tokens, tokens)
        mask.fill_(torch.tensor(torch.finfo(torch.float32).min))
        mask = mask.triu_(1).unsqueeze(1)
        for layer in self.layers:
            x = layer(x, mask)
        x = self.final_layer_norm(x)
        pooled = x[torch.arange(batch), input_ids.to(torch.int).argmax(dim=-1)]
        return self.text_projection(pooled)


class T5LayerNorm(nn.Module):
    """T5's RMSNorm: the variance computed in float32 (a Cast of a float32 tensor), rsqrt, the
    weight."""

    def __init__(self, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(WIDTH))
        self.eps = eps

    def forward(self, x):
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(variance + self.eps))


def relative_position_bucket(relative_position, buckets=32, max_distance=128):
    """T5's bidirectional buckets: half for each direction, exact below a quarter of the
    buckets, logarithmic up to max_distance."""
    buckets //= 2
    bucket = (relative_position > 0).to(torch.long) * buckets
    distance = torch.abs(relative_position)
    exact = buckets // 2
    large = exact + (torch.log(distance.float() / exact) / math.log(max_distance / exact) *
                     (buckets - exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, buckets - 1))
    return bucket + torch.where(distance < exact, distance, large)


class T5Attention(nn.Module):
    """T5's self-attention: no biases, no scaling of the scores, a learned bias per head and
    relative position bucket (computed in the first layer, shared by the others) added with the
    padding mask, the softmax in float32."""

    def __init__(self, relative_bias, heads=4):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(WIDTH, WIDTH, bias=False)
        self.k = nn.Linear(WIDTH, WIDTH, bias=False)
        self.v = nn.Linear(WIDTH, WIDTH, bias=False)
        self.o = nn.Linear(WIDTH, WIDTH, bias=False)
        self.relative_attention_bias = nn.Embedding(32, heads) if relative_bias else None

    def position_bias(self, tokens):
        context = torch.arange(tokens, dtype=torch.long)[:, None]
        memory = torch.arange(tokens, dtype=torch.long)[None, :]
        values = self.relative_attention_bias(relative_position_bucket(memory - context))
        return values.permute([2, 0, 1]).unsqueeze(0)

    def forward(self, x, additive_mask, bias):
        batch, tokens, _ = x.shape

        def heads(y):
            return y.view(batch, -1, self.heads, WIDTH // self.heads).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if bias is None:
            bias = self.position_bias(tokens) + additive_mask
        scores = torch.matmul(q, k.transpose(3, 2)) + bias
        probabilities = F.softmax(scores.float(), dim=-1).type_as(scores)
        context = torch.matmul(probabilities, v).transpose(1, 2).contiguous()
        return self.o(context.view(batch, -1, WIDTH)), bias


class T5Block(nn.Module):
    def __init__(self, relative_bias):
        super().__init__()
        self.layer_norm = T5LayerNorm()
        self.attention = T5Attention(relative_bias)
        self.ff_layer_norm = T5LayerNorm()
        self.wi = nn.Linear(WIDTH, 64, bias=False)
        self.wo = nn.Linear(64, WIDTH, bias=False)

    def forward(self, x, additive_mask, bias):
        attended, bias = self.attention(self.layer_norm(x), additive_mask, bias)
        x = x + attended
        return x + self.wo(torch.relu(self.wi(self.ff_layer_norm(x)))), bias


class T5Style(nn.Module):
    """A T5 encoder classifier (sentence-T5's form): token embeddings, two T5Blocks, a final
    T5LayerNorm, the mean over the real tokens and a Linear head."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Embedding(VOCAB, WIDTH)
        self.block = nn.ModuleList([T5Block(True), T5Block(False)])
        self.final_layer_norm = T5LayerNorm()
        self.head = nn.Linear(WIDTH, CLASSES, bias=False)

    def forward(self, input_ids, attention_mask):
        additive_mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * \
            torch.finfo(torch.float32).min
        x = self.shared(input_ids)
        bias = None
        for block in self.block:
            x, bias = block(x, additive_mask, bias)
        x = self.final_layer_norm(x)
        real = attention_mask[..., None].to(torch.float32)
        return self.head((x * real).sum(1) / real.sum(1))



def log_bucket_position(relative, buckets, max_position):
    """DeBERTa's relative positions: exact within half the buckets, logarithmic beyond, the sign
    kept (Sign, Abs, Log and Ceil of int64 distances)."""
    sign = torch.sign(relative)
    mid = buckets // 2
    near = (relative < mid) & (relative > -mid)
    distance = torch.where(near, torch.tensor(mid - 1).type_as(relative), torch.abs(relative))
    log_position = torch.ceil(torch.log(distance / mid) /
                              torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1)) + mid
    return torch.where(distance <= mid, relative.type_as(log_position), log_position * sign)


class DebertaAttention(nn.Module):
    """DeBERTa's disentangled self-attention (DeBERTa-v2's code with share_att_key off): the
    batch and heads merged into the rows of bmm, content-to-content scores plus
    content-to-position and position-to-content scores gathered (torch.gather) at the
    log-bucketed relative positions, all scaled by √(3·head size); the softmax masked before and
    after (XSoftmax's masked_fill)."""

    def __init__(self, heads=4, span=8):
        super().__init__()
        self.heads, self.size, self.span = heads, WIDTH // heads, span
        self.query_proj = nn.Linear(WIDTH, WIDTH)
        self.key_proj = nn.Linear(WIDTH, WIDTH)
        self.value_proj = nn.Linear(WIDTH, WIDTH)
        self.pos_key_proj = nn.Linear(WIDTH, WIDTH)
        self.pos_query_proj = nn.Linear(WIDTH, WIDTH)

    def rows(self, x):
        tokens = x.size(1)
        return x.view(x.size(0), tokens, self.heads, self.size).permute(0, 2, 1, 3) \
            .contiguous().view(-1, tokens, self.size)

    def forward(self, x, mask, relative, relative_embeddings):
        q, k, v = self.rows(self.query_proj(x)), self.rows(self.key_proj(x)), \
            self.rows(self.value_proj(x))
        scale = math.sqrt(self.size * 3)
        scores = torch.bmm(q, k.transpose(-1, -2) / torch.tensor(scale, dtype=q.dtype))
        repeat = q.size(0) // self.heads
        pos_key = self.rows(self.pos_key_proj(relative_embeddings)).repeat(repeat, 1, 1)
        pos_query = self.rows(self.pos_query_proj(relative_embeddings)).repeat(repeat, 1, 1)
        tokens = q.size(1)
        c2p_index = torch.clamp(relative + self.span, 0, 2 * self.span - 1)
        c2p = torch.gather(torch.bmm(q, pos_key.transpose(-1, -2)), dim=-1,
                           index=c2p_index.squeeze(0).expand([q.size(0), tokens, tokens]))
        p2c_index = torch.clamp(-relative + self.span, 0, 2 * self.span - 1)
        p2c = torch.gather(torch.bmm(k, pos_query.transpose(-1, -2)), dim=-1,
                           index=p2c_index.squeeze(0).expand([q.size(0), tokens, tokens]))
        scores = scores + c2p / scale + p2c.transpose(-1, -2) / scale
        scores = scores.view(-1, self.heads, tokens, tokens)
        hidden = ~mask.to(torch.bool)
        probabilities = F.softmax(scores.masked_fill(hidden, torch.finfo(scores.dtype).min), -1)
        probabilities = probabilities.masked_fill(hidden, 0)
        context = torch.bmm(probabilities.view(-1, tokens, tokens), v)
        return context.view(-1, self.heads, tokens, self.size).permute(0, 2, 1, 3) \
            .contiguous().view(x.size(0), tokens, WIDTH)


class DebertaLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = DebertaAttention()
        self.output = nn.Linear(WIDTH, WIDTH)
        self.attention_norm = nn.LayerNorm(WIDTH)
        self.intermediate = nn.Linear(WIDTH, 64)
        self.ffn_output = nn.Linear(64, WIDTH)
        self.output_norm = nn.LayerNorm(WIDTH)

    def forward(self, x, mask, relative, relative_embeddings):
        x = self.attention_norm(x + self.output(self.attention(x, mask, relative,
                                                               relative_embeddings)))
        return self.output_norm(x + self.ffn_output(F.gelu(self.intermediate(x))))


class DebertaStyle(nn.Module):
    """A DeBERTa-v3-style classifier: token embeddings (no absolute positions) normalised and
    masked, the 2-D attention mask (each query's row times each key's column), relative-position
    embeddings normalised once and shared by the layers, two DebertaLayers, a pooler on the
    first token."""

    def __init__(self, layers=2, span=8):
        super().__init__()
        self.span = span
        self.word_embeddings = nn.Embedding(VOCAB, WIDTH)
        self.embedding_norm = nn.LayerNorm(WIDTH)
        self.rel_embeddings = nn.Embedding(2 * span, WIDTH)
        self.rel_norm = nn.LayerNorm(WIDTH)
        self.layer = nn.ModuleList([DebertaLayer() for _ in range(layers)])
        self.pooler = nn.Linear(WIDTH, WIDTH)
        self.classifier = nn.Linear(WIDTH, CLASSES)

    def forward(self, input_ids, attention_mask):
        x = self.embedding_norm(self.word_embeddings(input_ids))
        x = x * attention_mask.unsqueeze(-1).to(x.dtype)
        mask = attention_mask.unsqueeze(1).unsqueeze(2)
        mask = mask * mask.squeeze(-2).unsqueeze(-1)
        tokens = input_ids.size(1)
        positions = torch.arange(tokens)
        relative = log_bucket_position(positions[:, None] - positions[None, :], self.span,
                                       64).to(torch.long).unsqueeze(0)
        relative_embeddings = self.rel_norm(self.rel_embeddings.weight).unsqueeze(0)
        for layer in self.layer:
            x = layer(x, mask, relative, relative_embeddings)
        return self.classifier(F.gelu(self.pooler(x[:, 0])))

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
    count = save_gradients(model, (ids, mask), labels, path, GOLDEN)
    assert count == len(list(model.parameters())), count

    # The Hugging Face form at opset 14 (LayerNorm written out), its sequence length dynamic,
    # token types 1 from the middle of each sample's tokens on.
    types = (torch.arange(TOKENS)[None, :] >= lengths[:, None] // 2).to(torch.int64) * mask
    np.savez(os.path.join(GOLDEN, "bert_style_inputs.npz"), input_ids=ids.numpy(),
             attention_mask=mask.numpy(), token_type_ids=types.numpy(),
             labels=labels.numpy().astype(np.int64))
    names = ["input_ids", "attention_mask"]
    export_text_model(BertStyle, 2, (ids, mask, types), names + ["token_type_ids"], "bert_style",
                      generator, labels)

    # RoBERTa's form at opset 14: the same tokens (ids 2 and up) padded with id 1.
    roberta_ids = torch.where(mask == 1, ids % (VOCAB - 2) + 2, torch.ones_like(ids))
    np.savez(os.path.join(GOLDEN, "roberta_style_inputs.npz"), input_ids=roberta_ids.numpy(),
             attention_mask=mask.numpy(), labels=labels.numpy().astype(np.int64))
    export_text_model(RobertaStyle, 3, (roberta_ids, mask), names, "roberta_style", generator,
                      labels)

    # Llama's decoder form at opset 14: the same tokens, padded on the left as decoders are
    # (the head reads the last token), with the sequence length dynamic.
    order = torch.argsort(mask, dim=1, stable=True)  # the padding first, then the tokens
    left_ids, left_mask = torch.gather(ids, 1, order), torch.gather(mask, 1, order)
    np.savez(os.path.join(GOLDEN, "llama_style_inputs.npz"), input_ids=left_ids.numpy(),
             attention_mask=left_mask.numpy(), labels=labels.numpy().astype(np.int64))
    export_text_model(LlamaStyle, 4, (left_ids, left_mask), names, "llama_style", generator,
                      labels)

    # GPT-2's form at opset 14 (LayerNorm written out), on the same left-padded tokens.
    export_text_model(Gpt2Style, 5, (left_ids, left_mask), names, "gpt2_style", generator, labels)

    # CLIP's text encoder at opset 14: the same tokens, the end token (the largest id) after each
    # sample's last, padding 0 after it; one input.
    end = lengths.clamp(max=TOKENS - 1)
    clip_ids = torch.where(torch.arange(TOKENS)[None, :] < end[:, None], ids % (VOCAB - 2) + 1,
                           torch.zeros_like(ids))
    clip_ids[torch.arange(SAMPLES), end] = VOCAB - 1
    np.savez(os.path.join(GOLDEN, "clip_style_inputs.npz"), input_ids=clip_ids.numpy(),
             labels=labels.numpy().astype(np.int64))
    export_text_model(ClipStyle, 6, (clip_ids,), ["input_ids"], "clip_style", generator, labels)

    # T5's encoder at opset 14 on the right-padded tokens of the first model.
    export_text_model(T5Style, 7, (ids, mask), names, "t5_style", generator, labels)

    # DeBERTa's encoder at opset 14 on the same tokens.
    export_text_model(DebertaStyle, 8, (ids, mask), names, "deberta_style", generator, labels)


def export_text_model(make, seed, inputs, names, family, generator, labels):
    """Makes the model (seeded), moves every parameter off its initial value, and writes
    <family>_opset14.onnx (the batch and the sequence length dynamic), PyTorch's logits on
    `inputs` (<family>_output.npy, in eval mode) and its gradients on `labels`."""
    torch.manual_seed(seed)
    model = make()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    model.eval()
    with torch.no_grad():
        np.save(os.path.join(GOLDEN, family + "_output.npy"), model(*inputs).numpy())
    path = os.path.join(MODELS, family + "_opset14.onnx")
    torch.onnx.export(model, inputs, path, input_names=names, output_names=["logits"],
                      opset_version=14,
                      dynamic_axes={**{n: {0: "batch", 1: "sequence"} for n in names},
                                    "logits": {0: "batch"}})
    model.train()
    count = save_gradients(model, inputs, labels, path, GOLDEN)
    assert count == len(list(model.parameters())), count

if __name__ == "__main__":
    main()
