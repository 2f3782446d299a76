"""PyTorch twins of jaxquant's Flax models and the original system's training step.

Not run on its own: `benchmarks/train_step.py` imports it to time JAX against the
PyTorch original, and `tests/test_torch_twins.py` checks that every twin has
exactly the Flax model's parameter count and (given the Flax weights) its outputs:

    python benchmarks/train_step.py --quick          # the benchmark
    python -m pytest tests/test_torch_twins.py -q    # parameter counts + outputs

What a twin is: the same layers, shapes and parameter count as the Flax module
for the same ml_collections config, written the way the original PyTorch code
would be written:

- GRU / LSTM run torch's native recurrent kernels (the ones `nn.GRU` / `nn.LSTM`
  call) on Flax's bias layout: flax `GRUCell` has input biases for r, z, n and a
  hidden bias only for n (torch's `b_hr`, `b_hz` are fixed at 0); flax
  `OptimizedLSTMCell` has hidden biases only (torch's `b_ih` is fixed at 0).
  Gate orders match (r, z, n and i, f, g, o), so Flax weights load 1:1.
- ResNet-18/34: 3×3/1 stem (no max-pool), BasicBlocks with 1×1 projection
  shortcuts, last BN scale of every block zero-initialised, NCHW; the head
  Dropout → Linear → BN → ReLU per `head_features`, → Dropout → cls / ret.
- Transformer: pre-LN blocks, learned positions, local attention |i - j| <= w as
  the original would do it: dense T×T scores with a band mask (torch SDPA with a
  boolean `attn_mask`), whole-head dropout, GELU (tanh form, as flax `nn.gelu`),
  LayerNorm eps 1e-6 (flax's default).
- MoE Transformer: the Transformer with every MLP replaced by a router + stacked
  expert weights `[E, d, h]`, top-k softmax routing renormalised over the k
  choices, experts run in a Python loop with index_select / index_add (no
  capacity limit: nothing is dropped), Switch load-balancing loss + router z-loss.

Every twin maps `x [B, T, F]` to `{"logits": [B, K], "ret": [B], "aux_loss": ()}`.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxquant.models import resnet as flax_resnet

__all__ = ["build_torch_model", "make_torch_train_step", "focal_loss",
           "load_flax_params", "count_params"]


def count_params(model):
  """Trainable parameters of a torch module."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Heads(nn.Module):
  """ClassAndReturnHead: Dropout → cls Linear(K) and ret Linear(1)."""

  def __init__(self, features, num_classes, dropout):
    super().__init__()
    self.drop = nn.Dropout(dropout)
    self.cls = nn.Linear(features, num_classes)
    self.ret = nn.Linear(features, 1)

  def forward(self, h):
    h = self.drop(h)
    return {"logits": self.cls(h), "ret": self.ret(h)[..., 0]}


# --------------------------------------------------------------------------- RNNs


class FlaxGRULayer(nn.Module):
  """One GRU layer with flax GRUCell's parameters, run by torch's GRU kernel.

  flax: r = σ(W_ir x + b_ir + W_hr h), z = σ(W_iz x + b_iz + W_hz h),
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 - z) ⊙ n + z ⊙ h
  — torch's GRU with b_hr = b_hz = 0 (3H·F + 3H·H + 4H parameters, not 6H biases).
  """

  def __init__(self, input_size, hidden):
    super().__init__()
    self.hidden = hidden
    k = 1.0 / math.sqrt(hidden)
    self.weight_ih = nn.Parameter(torch.empty(3 * hidden, input_size).uniform_(-k, k))
    self.weight_hh = nn.Parameter(torch.empty(3 * hidden, hidden).uniform_(-k, k))
    self.bias_ih = nn.Parameter(torch.empty(3 * hidden).uniform_(-k, k))
    self.bias_hn = nn.Parameter(torch.empty(hidden).uniform_(-k, k))
    self.register_buffer("zeros_rz", torch.zeros(2 * hidden), persistent=False)

  def forward(self, x):  # x [B, T, F] → [B, T, H]
    h0 = x.new_zeros(1, x.shape[0], self.hidden)
    bias_hh = torch.cat([self.zeros_rz, self.bias_hn])
    weights = [self.weight_ih, self.weight_hh, self.bias_ih, bias_hh]
    # nn.GRU.forward's own call: (input, hx, weights, has_biases, num_layers,
    # dropout, train, bidirectional, batch_first).
    out, _ = torch._VF.gru(x, h0, weights, True, 1, 0.0, self.training, False, True)
    return out


class FlaxLSTMLayer(nn.Module):
  """One LSTM layer with flax OptimizedLSTMCell's parameters (hidden-side biases
  only: 4H·F + 4H·H + 4H), run by torch's LSTM kernel with b_ih = 0."""

  def __init__(self, input_size, hidden):
    super().__init__()
    self.hidden = hidden
    k = 1.0 / math.sqrt(hidden)
    self.weight_ih = nn.Parameter(torch.empty(4 * hidden, input_size).uniform_(-k, k))
    self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden).uniform_(-k, k))
    self.bias_hh = nn.Parameter(torch.empty(4 * hidden).uniform_(-k, k))
    self.register_buffer("zeros_ih", torch.zeros(4 * hidden), persistent=False)

  def forward(self, x):
    h0 = x.new_zeros(1, x.shape[0], self.hidden)
    weights = [self.weight_ih, self.weight_hh, self.zeros_ih, self.bias_hh]
    out, _, _ = torch._VF.lstm(x, (h0, h0), weights, True, 1, 0.0, self.training, False,
                               True)
    return out


class RNNClassifier(nn.Module):
  """Twin of jaxquant.models.rnn.RNNClassifier: stacked layers, dropout between
  them, heads on the last step."""

  def __init__(self, cell, num_features, hidden, num_layers, dropout, num_classes):
    super().__init__()
    layer = {"gru": FlaxGRULayer, "lstm": FlaxLSTMLayer}[cell]
    self.layers = nn.ModuleList(
        [layer(num_features if i == 0 else hidden, hidden) for i in range(num_layers)])
    self.drop = nn.Dropout(dropout)
    self.head = Heads(hidden, num_classes, dropout)

  def forward(self, x):
    h = x
    for i, layer in enumerate(self.layers):
      if i > 0:
        h = self.drop(h)
      h = layer(h)
    out = self.head(h[:, -1])
    out["aux_loss"] = x.new_zeros(())
    return out


# --------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
  def __init__(self, in_ch, out_ch, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
    self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1)
    nn.init.zeros_(self.bn2.weight)  # As the Flax block (zero-init last BN scale).
    self.proj = None
    if stride != 1 or in_ch != out_ch:
      self.proj = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False),
                                nn.BatchNorm2d(out_ch, eps=1e-5, momentum=0.1))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    residual = x if self.proj is None else self.proj(x)
    return F.relu(residual + y)


class ResNet(nn.Module):
  """Twin of jaxquant.models.resnet.ResNet (NCHW feature planes)."""

  def __init__(self, num_features, depth, width, plane_width, head_features, dropout,
               num_classes):
    super().__init__()
    self.plane_width = plane_width
    self.conv_init = nn.Conv2d(num_features, width, 3, 1, 1, bias=False)
    self.bn_init = nn.BatchNorm2d(width, eps=1e-5, momentum=0.1)
    blocks, ch = [], width
    for i, count in enumerate(flax_resnet.STAGE_SIZES[depth]):
      for j in range(count):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(BasicBlock(ch, width * 2**i, stride))
        ch = width * 2**i
    self.blocks = nn.Sequential(*blocks)
    head, prev = [], ch
    for f in head_features:
      head += [nn.Dropout(dropout), nn.Linear(prev, f), nn.BatchNorm1d(f, eps=1e-5,
                                                                       momentum=0.1),
               nn.ReLU()]
      prev = f
    self.mlp = nn.Sequential(*head)
    self.head = Heads(prev, num_classes, dropout)

  def to_planes(self, x):
    """[B, T, F] → [B, F, H, W], oldest end zero-padded (jaxquant.models.planes)."""
    b, t, f = x.shape
    w = self.plane_width
    h = -(-t // w)
    x = F.pad(x, (0, 0, h * w - t, 0))
    return x.reshape(b, h, w, f).permute(0, 3, 1, 2)

  def forward(self, x):
    h = F.relu(self.bn_init(self.conv_init(self.to_planes(x))))
    h = self.blocks(h)
    h = self.mlp(h.mean(dim=(2, 3)))
    out = self.head(h)
    out["aux_loss"] = x.new_zeros(())
    return out


# --------------------------------------------------------------------------- Transformer


def band_mask(seq_len, radius, causal, device=None):
  """[T, T] bool, True where query i may attend key j (|i - j| <= w)."""
  i = torch.arange(seq_len, device=device)[:, None]
  j = torch.arange(seq_len, device=device)[None, :]
  mask = (i - j).abs() <= radius if radius is not None else torch.ones(
      seq_len, seq_len, dtype=torch.bool, device=device)
  if causal:
    mask = mask & (j <= i)
  return mask


class LocalSelfAttention(nn.Module):
  """q/k/v/out projections (flax DenseGeneral (d, H, D) ↔ Linear(d, H·D)), dense
  T×T SDPA under a band mask, whole-head dropout."""

  def __init__(self, d_model, num_heads, radius, causal, head_dropout, attention):
    super().__init__()
    self.h, self.dh = num_heads, d_model // num_heads
    self.query = nn.Linear(d_model, num_heads * self.dh)
    self.key = nn.Linear(d_model, num_heads * self.dh)
    self.value = nn.Linear(d_model, num_heads * self.dh)
    self.out = nn.Linear(num_heads * self.dh, d_model)
    self.radius = radius if attention == "local" else None
    self.causal, self.head_dropout = causal, head_dropout

  def forward(self, x):
    b, t, _ = x.shape
    split = lambda y: y.view(b, t, self.h, self.dh).transpose(1, 2)  # [B, H, T, D]
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    mask = band_mask(t, self.radius, self.causal, x.device)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, D]
    if self.training and self.head_dropout > 0:
      keep = torch.bernoulli(torch.full((b, self.h, 1, 1), 1 - self.head_dropout,
                                        device=x.device))
      o = o * keep / (1 - self.head_dropout)
    return self.out(o.transpose(1, 2).reshape(b, t, self.h * self.dh))


class MlpBlock(nn.Module):
  def __init__(self, d_model, mlp_dim, dropout):
    super().__init__()
    self.wi = nn.Linear(d_model, mlp_dim)
    self.wo = nn.Linear(mlp_dim, d_model)
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    h = self.drop(F.gelu(self.wi(x), approximate="tanh"))
    return self.drop(self.wo(h)), {}


class MoEFeedForward(nn.Module):
  """Router + stacked experts, top-k, a loop over experts (index_select/index_add)."""

  def __init__(self, d_model, num_experts, top_k, expert_dim, dropout):
    super().__init__()
    self.e, self.k = num_experts, top_k
    self.router = nn.Linear(d_model, num_experts)
    std_in, std_out = 1 / math.sqrt(d_model), 1 / math.sqrt(expert_dim)
    self.w_in = nn.Parameter(torch.randn(num_experts, d_model, expert_dim) * std_in)
    self.b_in = nn.Parameter(torch.zeros(num_experts, expert_dim))
    self.w_out = nn.Parameter(torch.randn(num_experts, expert_dim, d_model) * std_out)
    self.b_out = nn.Parameter(torch.zeros(num_experts, d_model))
    self.drop = nn.Dropout(dropout)

  def forward(self, x):
    shape = x.shape
    xf = x.reshape(-1, shape[-1])
    logits = self.router(xf)
    probs = logits.softmax(-1)
    top_p, idx = probs.topk(self.k, dim=-1)
    weights = top_p / top_p.sum(-1, keepdim=True)
    y = torch.zeros_like(xf)
    for e in range(self.e):
      token, choice = torch.nonzero(idx == e, as_tuple=True)
      if token.numel() == 0:
        continue
      xe = xf.index_select(0, token)
      h = F.gelu(xe @ self.w_in[e] + self.b_in[e], approximate="tanh")
      ye = h @ self.w_out[e] + self.b_out[e]
      y = y.index_add(0, token, ye * weights[token, choice, None])
    y = self.drop(y)
    f = F.one_hot(idx[:, 0], self.e).float().mean(0)
    lb_loss = self.e * (f * probs.mean(0)).sum()
    z_loss = (torch.logsumexp(logits, -1) ** 2).mean()
    return y.reshape(shape), {"lb_loss": lb_loss, "z_loss": z_loss}


class Block(nn.Module):
  def __init__(self, d_model, num_heads, radius, causal, attention, dropout, head_dropout,
               ffn):
    super().__init__()
    self.ln_attn = nn.LayerNorm(d_model, eps=1e-6)
    self.attn = LocalSelfAttention(d_model, num_heads, radius, causal, head_dropout,
                                   attention)
    self.drop = nn.Dropout(dropout)
    self.ln_ffn = nn.LayerNorm(d_model, eps=1e-6)
    self.ffn = ffn

  def forward(self, x):
    x = x + self.drop(self.attn(self.ln_attn(x)))
    h, extras = self.ffn(self.ln_ffn(x))
    return x + h, extras


class Transformer(nn.Module):
  """Twin of jaxquant.models.transformer.Transformer / moe.MoETransformer."""

  def __init__(self, m, num_features, num_classes, moe=False):
    super().__init__()
    d = m.d_model
    self.input_proj = nn.Linear(num_features, d)
    self.positions = m.get("positions", "learned")
    if self.positions == "learned":
      self.pos_embed = nn.Parameter(torch.randn(m.max_len, d) * 0.02)
    self.drop = nn.Dropout(m.dropout)
    self.pooling = m.get("pooling", "mean")
    self.moe = moe
    if moe:
      self.aux_w, self.z_w = m.aux_loss_weight, m.z_loss_weight
    blocks = []
    for _ in range(m.num_layers):
      if moe:
        ffn = MoEFeedForward(d, m.num_experts, m.top_k,
                             m.get("expert_dim", None) or m.get("mlp_dim"), m.dropout)
      else:
        ffn = MlpBlock(d, m.mlp_dim, m.dropout)
      blocks.append(Block(d, m.num_heads, m.attention_radius, m.get("causal", False),
                          m.get("attention", "local"), m.dropout, m.head_dropout, ffn))
    self.blocks = nn.ModuleList(blocks)
    self.ln_final = nn.LayerNorm(d, eps=1e-6)
    self.head = Heads(d, num_classes, m.dropout)

  def forward(self, x):
    t = x.shape[1]
    h = self.input_proj(x)
    if self.positions == "learned":
      h = h + self.pos_embed[:t][None]
    else:
      from jaxquant.models.transformer import sinusoidal_positions
      h = h + torch.from_numpy(sinusoidal_positions(t, h.shape[-1]))[None]
    h = self.drop(h)
    extras = []
    for block in self.blocks:
      h, e = block(h)
      extras.append(e)
    h = self.ln_final(h)
    pooled = h.mean(1) if self.pooling == "mean" else h[:, -1]
    out = self.head(pooled)
    if self.moe:
      out["aux_loss"] = (self.aux_w * sum(e["lb_loss"] for e in extras)
                         + self.z_w * sum(e["z_loss"] for e in extras))
    else:
      out["aux_loss"] = x.new_zeros(())
    return out


# --------------------------------------------------------------------------- factory


def build_torch_model(config, num_classes=2, num_features=None):
  """The PyTorch twin of `jaxquant.state.make_model(config, num_classes)`.

  Args:
    config: a jaxquant ConfigDict (configs/<model>.py); `config.model.name` picks
      the model.
    num_classes: K.
    num_features: F; None = the pipeline's bar features (6).

  Returns:
    A torch `nn.Module` (float32, train mode) with the Flax model's parameter count.
  """
  if num_features is None:
    from jaxquant.data import features
    num_features = len(features.FEATURE_NAMES)
  m = config.model
  name = m.name
  if name in ("gru", "lstm"):
    return RNNClassifier(name, num_features, m.hidden, m.num_layers, m.dropout, num_classes)
  if name == "resnet":
    return ResNet(num_features, m.depth, m.width, m.plane_width, tuple(m.head_features),
                  m.dropout, num_classes)
  if name == "transformer":
    return Transformer(m, num_features, num_classes)
  if name == "moe":
    return Transformer(m, num_features, num_classes, moe=True)
  raise ValueError(f"no torch twin for model {name!r}")


# --------------------------------------------------------------------------- training


def focal_loss(logits, y, alpha, gamma=2.0):
  """Mean over the batch of -alpha_y (1 - p_y)^gamma log p_y."""
  log_p = F.log_softmax(logits.float(), -1).gather(1, y[:, None])[:, 0]
  return (-alpha[y] * (1 - log_p.exp()) ** gamma * log_p).mean()


def make_torch_train_step(model, config, alpha, compile=False, steps_per_epoch=100,
                          autocast_dtype=None):
  """The original's training step: AdamW + clip_grad_norm_(clip) + focal / CE (+ λ·MSE on
  the return + the model's aux loss), eager (or the loss under `torch.compile`).

  Runs on the device of the model's parameters. `autocast_dtype` (e.g.
  torch.bfloat16): forward and loss under `torch.autocast` in that dtype, float32
  parameters and optimizer (PyTorch's mixed precision; jaxquant's `train.dtype`).

  Returns:
    `step(x, y, r) -> loss tensor` (one optimizer update).
  """
  tc, lc = config.train, config.loss
  device = next(model.parameters()).device
  opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
  sched = torch.optim.lr_scheduler.CosineAnnealingLR(
      opt, T_max=max(tc.epochs * steps_per_epoch, 1), eta_min=tc.end_lr)
  alpha = torch.as_tensor(alpha, dtype=torch.float32, device=device)
  ret_w = float(lc.return_weight)

  def objective(x, y, r):
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
      out = model(x)
    out = {k: v.float() for k, v in out.items()}
    if lc.name == "ce":
      cls = F.cross_entropy(out["logits"], y, weight=alpha)
    else:
      cls = focal_loss(out["logits"], y, alpha, lc.gamma)
    return cls + ret_w * F.mse_loss(out["ret"], r) + out["aux_loss"]

  fn = torch.compile(objective) if compile else objective
  model.train()

  def step(x, y, r):
    opt.zero_grad(set_to_none=True)
    loss = fn(x, y, r)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
    opt.step()
    sched.step()
    return loss.detach()

  return step


# --------------------------------------------------------------------------- weights


def load_flax_params(model, params, batch_stats=None):
  """Copies Flax parameters (and BatchNorm statistics) into the twin, in place.

  Used by the tests to show the twins compute the same function. Args are the
  nested dicts of `model.init(...)["params"]` / `["batch_stats"]`.
  """
  import numpy as np
  t = lambda a: torch.from_numpy(np.array(a, np.float32))
  batch_stats = batch_stats or {}

  def put(param, value):
    value = t(value)
    assert param.shape == value.shape, (param.shape, value.shape)
    with torch.no_grad():
      param.copy_(value)

  def heads(head, p):
    put(head.cls.weight, np.asarray(p["cls"]["kernel"]).T)
    put(head.cls.bias, p["cls"]["bias"])
    put(head.ret.weight, np.asarray(p["ret"]["kernel"]).T)
    put(head.ret.bias, p["ret"]["bias"])

  def dense(lin, p, flatten_in=False):
    k = np.asarray(p["kernel"])
    k = k.reshape(-1, k.shape[-1]) if flatten_in else k.reshape(k.shape[0], -1)
    put(lin.weight, k.T)
    put(lin.bias, np.asarray(p["bias"]).reshape(-1))

  def bn(mod, p, s):
    put(mod.weight, p["scale"])
    put(mod.bias, p["bias"])
    put(mod.running_mean, s["mean"])
    put(mod.running_var, s["var"])

  if isinstance(model, RNNClassifier):
    # The cells are created in the classifier's scope: GRUCell_0, GRUCell_1, ...
    # (or OptimizedLSTMCell_i), one per layer.
    cells = sorted((n for n in params if n != "head"), key=lambda n: int(n.rsplit("_", 1)[1]))
    for layer, name in zip(model.layers, cells, strict=True):
      p = params[name]
      if "kernel" not in next(iter(p.values())):  # Nested under an RNN scope.
        p = p[next(iter(p))]
      cat = lambda names: np.concatenate([np.asarray(p[n]["kernel"]) for n in names], 1).T
      if isinstance(layer, FlaxGRULayer):
        put(layer.weight_ih, cat(["ir", "iz", "in"]))
        put(layer.weight_hh, cat(["hr", "hz", "hn"]))
        put(layer.bias_ih, np.concatenate([p[n]["bias"] for n in ("ir", "iz", "in")]))
        put(layer.bias_hn, p["hn"]["bias"])
      else:
        put(layer.weight_ih, cat(["ii", "if", "ig", "io"]))
        put(layer.weight_hh, cat(["hi", "hf", "hg", "ho"]))
        put(layer.bias_hh, np.concatenate([p[n]["bias"] for n in ("hi", "hf", "hg", "ho")]))
    heads(model.head, params["head"])
  elif isinstance(model, ResNet):
    conv = lambda mod, p: put(mod.weight, np.transpose(np.asarray(p["kernel"]), (3, 2, 0, 1)))
    conv(model.conv_init, params["conv_init"])
    bn(model.bn_init, params["bn_init"], batch_stats["bn_init"])
    names = [n for n in params if n.startswith("stage")]
    names.sort(key=lambda n: (int(n[5]), int(n.split("block")[1])))
    for block, name in zip(model.blocks, names):
      p, s = params[name], batch_stats[name]
      conv(block.conv1, p["Conv_0"])
      bn(block.bn1, p["BatchNorm_0"], s["BatchNorm_0"])
      conv(block.conv2, p["Conv_1"])
      bn(block.bn2, p["BatchNorm_1"], s["BatchNorm_1"])
      if block.proj is not None:
        conv(block.proj[0], p["conv_proj"])
        bn(block.proj[1], p["norm_proj"], s["norm_proj"])
    linears = [m for m in model.mlp if isinstance(m, nn.Linear)]
    norms = [m for m in model.mlp if isinstance(m, nn.BatchNorm1d)]
    for k, (lin, norm) in enumerate(zip(linears, norms)):
      dense(lin, params[f"head_dense{k + 1}"])
      bn(norm, params[f"head_bn{k + 1}"], batch_stats[f"head_bn{k + 1}"])
    heads(model.head, params["head"])
  elif isinstance(model, Transformer):
    dense(model.input_proj, params["input_proj"])
    if model.positions == "learned":
      put(model.pos_embed, params["pos_embed"]["embedding"])
    for i, block in enumerate(model.blocks):
      p = params[f"block_{i}"]
      for ln in ("ln_attn", "ln_ffn"):
        put(getattr(block, ln).weight, p[ln]["scale"])
        put(getattr(block, ln).bias, p[ln]["bias"])
      for proj in ("query", "key", "value"):
        dense(getattr(block.attn, proj), p["attn"][proj])
      dense(block.attn.out, p["attn"]["out"], flatten_in=True)
      f = p["ffn"]
      if isinstance(block.ffn, MlpBlock):
        dense(block.ffn.wi, f["wi"])
        dense(block.ffn.wo, f["wo"])
      else:
        dense(block.ffn.router, f["router"])
        for n in ("w_in", "b_in", "w_out", "b_out"):
          put(getattr(block.ffn, n), f[n])
    put(model.ln_final.weight, params["ln_final"]["scale"])
    put(model.ln_final.bias, params["ln_final"]["bias"])
    heads(model.head, params["head"])
  else:
    raise TypeError(f"unknown twin {type(model).__name__}")
