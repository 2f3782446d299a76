"""An LSTM layer with a hand-written backward pass (for XLA:CPU's while loops).

`flax.linen.OptimizedLSTMCell` under `nn.RNN` leaves the backward to autodiff
of `lax.scan`: XLA:CPU then runs ~20 small kernels per time step (each gate
recomputed in several fusions, a dozen stacked residuals) and at the original's
shape (T=500, batch 4) the train step took 2.5x PyTorch's fused oneDNN LSTM.
Here, as cuDNN/oneDNN do:

- the input projection of all time steps is one matmul before the loop, and the
  input/recurrent weight gradients are one matmul each after it;
- the loop does one [B, H] x [H, 4H] matmul and one elementwise pass per step,
  forward and backward, and stores per step only the gate activations and c;
- all four gates come from one tanh: i, f, o are sigmoids, and
  sigmoid(z) = (1 + tanh(z / 2)) / 2, so their pre-activation columns are
  halved (folded into the weights) and one tanh pass serves the four gates.

Same parameters (names, shapes, initialisers) as `OptimizedLSTMCell`, so the
parameter tree, checkpoints and the PyTorch twin's weight mapping are unchanged;
same function up to float rounding (tests/test_lstm.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.recurrent import DenseParams
from jax import lax

_GATES = "ifgo"  # OptimizedLSTMCell's order of the concatenated gate columns.


def gate_scale(hidden):
  """Multipliers of the 4H pre-activation columns: 1/2 for the sigmoid gates
  (i, f, o), 1 for the tanh candidate g."""
  half, one = jnp.full((hidden,), 0.5, jnp.float32), jnp.ones((hidden,), jnp.float32)
  return jnp.concatenate([half, half, one, half])


def _gates(u):
  """Gate values from u = tanh(scaled pre-activations) [..., 4H]."""
  h = u.shape[-1] // 4
  i, f, g, o = (u[..., k * h:(k + 1) * h] for k in range(4))
  return 0.5 + 0.5 * i, 0.5 + 0.5 * f, g, 0.5 + 0.5 * o


def _dot(a, w):
  return jnp.dot(a.astype(w.dtype), w, preferred_element_type=jnp.float32)


@jax.custom_vjp
def recurrence(zx, wh):
  """Hidden states [T, B, H] (dtype of zx) of an LSTM from zero state.

  Args:
    zx: [T, B, 4H] input projections plus bias, time-major, columns scaled by
      `gate_scale`.
    wh: [H, 4H] recurrent kernel, columns scaled by `gate_scale`.
  """
  return _forward(zx, wh)[0]


def _forward(zx, wh):
  _, b, h4 = zx.shape
  zero = jnp.zeros((b, h4 // 4), jnp.float32)

  def step(carry, z):
    c, h = carry
    u = jnp.tanh(z.astype(jnp.float32) + _dot(h, wh))
    i, f, g, o = _gates(u)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), (u, c, h)

  _, (u, c, h) = lax.scan(step, (zero, zero), zx)
  return h.astype(zx.dtype), (u, c, h, wh, jnp.zeros((0,), zx.dtype))


def _backward(residuals, dhs):
  u, c, hs, wh, zx_like = residuals
  t_len, b, h4 = u.shape
  hidden = h4 // 4
  zero = jnp.zeros((b, hidden), jnp.float32)
  wh_t = wh.T

  def step(carry, inputs):
    dh_next, dc_next, t = carry
    ut, ct, dh_out = inputs
    c_prev = jnp.where(t > 0, lax.dynamic_index_in_dim(c, jnp.maximum(t - 1, 0), 0, False),
                       0.0)
    i, f, g, o = _gates(ut)
    dh = dh_out.astype(jnp.float32) + dh_next
    tc = jnp.tanh(ct)
    dc = dc_next + dh * o * (1 - tc * tc)
    # d/du of (i, f, g, o) is (1/2, 1/2, 1, 1/2); du/dz = 1 - u².
    dz = jnp.concatenate([0.5 * dc * g, 0.5 * dc * c_prev, dc * i, 0.5 * dh * tc],
                         -1) * (1 - ut * ut)
    return (_dot(dz, wh_t), dc * f, t - 1), dz

  _, dz = lax.scan(step, (zero, zero, jnp.int32(t_len - 1)), (u, c, dhs), reverse=True)
  h_prev = jnp.concatenate([jnp.zeros((1, b, hidden), hs.dtype), hs[:-1]], 0)
  dwh = jnp.dot(h_prev.reshape(t_len * b, hidden).T, dz.reshape(t_len * b, h4))
  return dz.astype(zx_like.dtype), dwh.astype(wh.dtype)


recurrence.defvjp(_forward, _backward)


class LSTM(nn.Module):
  """One LSTM layer over `[B, T, F]`: returns `[B, T, H]`, or `[B, H]` (the last
  step) with `last_only`. Parameters as `nn.OptimizedLSTMCell(features)`."""
  features: int
  last_only: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = self.features
    probe_h = jnp.zeros((1, hidden), self.param_dtype)  # Only its shape matters.
    wi, wh, bias = [], [], []
    for gate in _GATES:
      kernel, _ = DenseParams(hidden, use_bias=False, param_dtype=self.param_dtype,
                              kernel_init=nn.initializers.lecun_normal(),
                              name=f"i{gate}")(x)
      recurrent, b = DenseParams(hidden, use_bias=True, param_dtype=self.param_dtype,
                                 kernel_init=nn.initializers.orthogonal(),
                                 bias_init=nn.initializers.zeros_init(),
                                 name=f"h{gate}")(probe_h)
      wi.append(kernel), wh.append(recurrent), bias.append(b)
    scale = gate_scale(hidden)
    wi = (jnp.concatenate(wi, 1) * scale).astype(self.dtype)
    wh = (jnp.concatenate(wh, 1) * scale).astype(self.dtype)
    bias = jnp.concatenate(bias) * scale
    batch, steps, feats = x.shape
    x_t = jnp.swapaxes(x.astype(self.dtype), 0, 1).reshape(steps * batch, feats)
    zx = (_dot(x_t, wi) + bias).astype(self.dtype).reshape(steps, batch, 4 * hidden)
    hs = recurrence(zx, wh)
    return hs[-1] if self.last_only else jnp.swapaxes(hs, 0, 1)
