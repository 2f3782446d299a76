"""An LSTM layer with a hand-written backward pass (for XLA:CPU's while loops).

`flax.linen.OptimizedLSTMCell` under `nn.RNN` leaves the backward to autodiff
of `lax.scan`: XLA:CPU then runs many small kernels per time step (each gate
recomputed in several fusions, three matmuls per backward step, a dozen stacked
residuals), and at the original's shape (T=500, batch 4) the train step was far
behind PyTorch's fused oneDNN LSTM (benchmarks/train_step.py compares them). Here:

- each step is one matmul of [x_t, h, 1] with the stacked input, recurrent and
  bias rows, forward; one [B, 4H] x [4H, H] matmul for dh, backward;
- the weight gradient (all three blocks) is one matmul after the loop, and so is
  the input gradient; per step the gate activations, c and h are stored;
- all four gates come from one tanh: i, f, o are sigmoids, and
  sigmoid(z) = (1 + tanh(z / 2)) / 2, so their pre-activation columns are
  halved (folded into the weights) and one tanh pass serves the four gates.

(Hoisting the input projection out of the loop, as cuDNN does, was slower here:
XLA:CPU's [T·B, F] x [F, 4H] matmul with F = 6 features and the bias broadcast
over [T, B, 4H] cost more than the per-step matmul's extra rows.)

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
    w = jnp.concatenate([jnp.concatenate(wi, 1), jnp.concatenate(wh, 1),
                         jnp.concatenate(bias)[None]], 0)
    hs = recurrence(jnp.swapaxes(x.astype(self.dtype), 0, 1),
                    (w * gate_scale(hidden)).astype(self.dtype))
    return hs[-1] if self.last_only else jnp.swapaxes(hs, 0, 1)


@jax.custom_vjp
def recurrence(x, w):
  """Hidden states [T, B, H] (dtype of x) of an LSTM from zero state.

  Args:
    x: [T, B, F] inputs, time-major.
    w: [F + H + 1, 4H] the input kernel, recurrent kernel and bias stacked as
      rows (each step is one matmul of [x_t, h, 1] with it), columns scaled by
      `gate_scale`.
  """
  return _forward(x, w)[0]


def _forward(x, w):
  b = x.shape[1]
  h4 = w.shape[1]
  zero = jnp.zeros((b, h4 // 4), jnp.float32)
  ones = jnp.ones((b, 1), x.dtype)

  def step(carry, xt):
    c, h = carry
    u = jnp.tanh(_dot(jnp.concatenate([xt, h.astype(x.dtype), ones], 1), w))
    i, fg, g, o = _gates(u)
    c = fg * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), (u, c, h)

  _, (u, c, h) = lax.scan(step, (zero, zero), x)
  return h.astype(x.dtype), (u, c, h, w, x)


def _backward(residuals, dhs):
  u, c, hs, w, x = residuals
  t_len, b, h4 = u.shape
  hidden = h4 // 4
  f = x.shape[-1]
  zero = jnp.zeros((b, hidden), jnp.float32)
  wh_t = w[f:f + hidden].T
  shift = lambda a: jnp.concatenate([jnp.zeros((1, b, hidden), a.dtype), a[:-1]], 0)

  def step(carry, inputs):
    dh_next, dc_next = carry
    ut, ct, c_prev, dh_out = inputs
    i, fg, g, o = _gates(ut)
    dh = dh_out.astype(jnp.float32) + dh_next
    tc = jnp.tanh(ct)
    dc = dc_next + dh * o * (1 - tc * tc)
    dz = jnp.concatenate([0.5 * dc * g, 0.5 * dc * c_prev, dc * i, 0.5 * dh * tc],
                         -1) * (1 - ut * ut)
    return (_dot(dz, wh_t), dc * fg), dz

  _, dz = lax.scan(step, (zero, zero), (u, c, shift(c), dhs), reverse=True)
  a = jnp.concatenate([x.astype(jnp.float32), shift(hs), jnp.ones((t_len, b, 1), jnp.float32)],
                      -1).reshape(t_len * b, -1)
  dz2 = dz.reshape(t_len * b, h4)
  dw = jnp.dot(a.T, dz2)
  dx = jnp.dot(dz2, w[:f].astype(jnp.float32).T).reshape(t_len, b, f)
  return dx.astype(x.dtype), dw.astype(w.dtype)


recurrence.defvjp(_forward, _backward)
