"""Tests for jaxquant.models.planes and jaxquant.models.resnet.

References: a numpy loop for the plane layout; a layer-shape formula for the
parameter count; and, when torch imports, a PyTorch twin (torch.nn Conv2d /
BatchNorm2d, torchvision's BasicBlock layout) checked for parameter count and,
with the weights copied over, for identical eval-mode outputs.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import resnet as resnet_config
from jaxquant.models.planes import planes_shape, to_planes
from jaxquant.models import build_model
from jaxquant.models.resnet import STAGE_SIZES, ResNet

try:
    import torch
except ImportError:  # The torch twin tests are skipped; the formula tests still run.
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")

# XLA:CPU's default optimisation takes ~30-50 s to compile the ResNet's random
# initialisers on this 2-core machine; the test shapes are tiny, so compile
# unoptimised (several times faster to compile, the same numbers up to rounding).
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

F = 3  # Features (channels) of the small test inputs.
SMALL = dict(width=4, plane_width=6, head_features=(16, 8), dropout=0.3)
HEAD_NAMES = ("head_dense", "head_bn", "head")


# --------------------------------------------------------------------- planes

def planes_reference(x, width):
    """The layout written out as a loop over bars (most recent bar bottom-right)."""
    B, T, F_ = x.shape
    H = -(-T // width)
    out = np.zeros((B, H, width, F_), x.dtype)
    pad = H * width - T
    for t in range(T):
        s = t + pad  # Position in the left-padded window.
        out[:, s // width, s % width, :] = x[:, t, :]
    return out


@pytest.mark.parametrize("T,width", [(12, 4), (12, 12), (7, 3), (500, 25), (10, 4), (5, 8), (1, 1)])
def test_to_planes_matches_loop(T, width):
    x = np.random.default_rng(T * 100 + width).normal(size=(2, T, F)).astype(np.float32)
    got = np.asarray(to_planes(jnp.asarray(x), width))
    assert got.shape == (2, *planes_shape(T, F, width))
    np.testing.assert_array_equal(got, planes_reference(x, width))
    # The most recent bar always sits at the bottom-right corner.
    np.testing.assert_array_equal(got[:, -1, -1], x[:, -1])


def test_to_planes_docstring_example_and_jit():
    x = jnp.arange(1, 8, dtype=jnp.float32).reshape(1, 7, 1)
    want = [[0, 0, 1], [2, 3, 4], [5, 6, 7]]
    np.testing.assert_array_equal(to_planes(x, 3)[0, :, :, 0], want)
    np.testing.assert_array_equal(jax.jit(to_planes, static_argnums=1)(x, 3)[0, :, :, 0], want)


def test_planes_shape():
    assert planes_shape(500, 10, 25) == (20, 25, 10)
    assert planes_shape(501, 10, 25) == (21, 25, 10)
    assert planes_shape(64, 10, 8) == (8, 8, 10)
    with pytest.raises(ValueError):
        planes_shape(10, 3, 0)


# ------------------------------------------------------------ shapes / counts

def count(tree):
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tree))


def trunk(params):
    return {k: v for k, v in params.items() if not k.startswith(HEAD_NAMES)}


def init_shapes(model, x_shape):
    """Variable shapes and dtypes, traced without compiling (cheap even at full size)."""
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    return jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x, train=False), x)


@functools.lru_cache(maxsize=None)
def full_size_params(depth):
    """Parameter shapes of the full configuration (width 64, head 512/256), 10 channels, T=500."""
    return init_shapes(ResNet(depth=depth), (2, 500, 10))


def formula_trunk_params(depth, width, in_ch):
    """BasicBlock ResNet trunk: bias-free convs, BN = scale + bias per channel."""
    n = 9 * in_ch * width + 2 * width  # Stem conv + BN.
    cin = width
    for i, blocks in enumerate(STAGE_SIZES[depth]):
        cout = width * 2**i
        for j in range(blocks):
            stride = 2 if i > 0 and j == 0 else 1
            n += 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
            if stride != 1 or cin != cout:
                n += cin * cout + 2 * cout  # 1×1 projection + BN.
            cin = cout
    return n


def formula_head_params(in_features, head_features, num_classes):
    n, f_in = 0, in_features
    for f in head_features:
        n += f_in * f + f + 2 * f  # Dense (with bias) + BN.
        f_in = f
    return n + f_in * num_classes + num_classes + f_in + 1  # cls + ret.


def abstract_forward(model, x_shape, train):
    """(variables, outputs[, updates]) shapes/dtypes of init + apply, without compiling."""
    def run(x):
        variables = model.init({"params": jax.random.key(0)}, x, train=False)
        if train:
            return variables, model.apply(variables, x, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.key(1)})
        return variables, model.apply(variables, x, train=False)
    return jax.eval_shape(run, jax.ShapeDtypeStruct(x_shape, jnp.float32))


@pytest.mark.parametrize("depth,T", [(18, 22), (34, 9)])
def test_forward_shapes(depth, T):
    model = ResNet(depth=depth, num_classes=3, **SMALL)
    variables, (out, upd) = abstract_forward(model, (5, T, F), train=True)
    assert out["logits"].shape == (5, 3) and out["logits"].dtype == jnp.float32
    assert out["ret"].shape == (5,) and out["ret"].dtype == jnp.float32
    assert out["aux_loss"].shape == () and out["aux_loss"].dtype == jnp.float32
    assert jax.tree_util.tree_structure(upd["batch_stats"]) == jax.tree_util.tree_structure(
        variables["batch_stats"])
    blocks = [k for k in variables["params"] if k.startswith("stage")]
    assert len(blocks) == sum(STAGE_SIZES[depth])
    # Projection shortcuts exactly where the shape changes (first block of stages 2-4).
    projected = sorted(k for k in blocks if "conv_proj" in variables["params"][k])
    assert projected == ["stage2_block1", "stage3_block1", "stage4_block1"]
    # Stage i has width * 2**i channels; the head sees the last stage's.
    assert variables["params"]["stage4_block1"]["conv_proj"]["kernel"].shape == (1, 1, 16, 32)
    assert variables["params"]["head_dense1"]["kernel"].shape == (32, 16)


@pytest.mark.parametrize("depth", [18, 34])
def test_param_count_full_size_matches_formula(depth):
    shapes = full_size_params(depth)
    params = shapes["params"]
    assert count(trunk(params)) == formula_trunk_params(depth, 64, 10)
    assert count(params) == formula_trunk_params(depth, 64, 10) + formula_head_params(512, (512, 256), 2)
    # One (mean, var) pair per BatchNorm (only BatchNorm has a "scale").
    n_scale = sum(int(np.prod(p.shape)) for path, p in jax.tree_util.tree_leaves_with_path(params)
                  if path[-1].key == "scale")
    assert count(shapes["batch_stats"]) == 2 * n_scale
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))


def test_bfloat16_compute_float32_params_and_outputs():
    model = ResNet(depth=18, dtype=jnp.bfloat16, **SMALL)
    variables, (out, upd) = abstract_forward(model, (2, 12, F), train=True)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(upd))
    assert out["logits"].dtype == jnp.float32 and out["ret"].dtype == jnp.float32


def test_bad_depth_rejected():
    with pytest.raises(ValueError, match="depth"):
        init_shapes(ResNet(depth=50, **SMALL), (2, 12, F))


# ------------------------------------------------------- init, batch stats, dropout

@pytest.fixture(scope="module")
def small():
    """A small ResNet-18, jitted eval/train applies, real init and a batch.

    T=22 with plane_width 6 → 4×6 planes (2 bars of left padding): even sizes,
    where stride-2 padding conventions differ.
    """
    model = ResNet(depth=18, **SMALL)
    x = jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, size=(6, 22, F)), jnp.float32)
    variables = jit(lambda x: model.init({"params": jax.random.key(0)}, x, train=False))(x)
    # Eval mode needs neither a dropout RNG nor a mutable collection.
    evaluate = jit(lambda v, x: model.apply(v, x, train=False))
    train = jit(lambda v, x, seed: model.apply(v, x, train=True, mutable=["batch_stats"],
                                               rngs={"dropout": jax.random.key(seed)}))
    return model, variables, x, evaluate, train


def random_variables(variables, seed):
    """Random values everywhere (init has zero BN scales, unit variances...); 1-D ones positive."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.abs(rng.normal(1.0, 0.3, a.shape)) if a.ndim == 1
                              else rng.normal(0.0, 0.5, a.shape), jnp.float32), variables)


def test_init(small):
    model, variables, x, evaluate, _ = small
    assert set(variables) == {"params", "batch_stats"}
    p = variables["params"]
    # The Flax ImageNet recipe: last BN of each block starts at scale 0.
    assert not np.asarray(p["stage1_block1"]["BatchNorm_1"]["scale"]).any()
    assert np.asarray(p["stage1_block1"]["BatchNorm_0"]["scale"]).all()
    assert float(np.std(p["conv_init"]["kernel"])) > 0
    out = evaluate(variables, x)
    assert np.isfinite(np.asarray(out["logits"])).all() and np.isfinite(np.asarray(out["ret"])).all()


def test_batch_stats_update_in_train_mode(small):
    model, variables, x, _, train = small
    _, upd = train(variables, x, 1)
    old = jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
    new = jax.tree_util.tree_leaves(upd["batch_stats"])
    assert len(old) == len(new) > 0
    for (path, a), b in zip(old, new):
        assert not np.allclose(a, b), f"batch_stats{jax.tree_util.keystr(path)} did not move"
    # Momentum 0.9: new running mean = 0.9 * 0 + 0.1 * batch mean of the stem conv output.
    planes = to_planes(x, SMALL["plane_width"])
    stem = jax.lax.conv_general_dilated(
        planes, variables["params"]["conv_init"]["kernel"], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(upd["batch_stats"]["bn_init"]["mean"],
                               0.1 * np.asarray(stem).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)


def test_eval_uses_running_stats_not_the_batch(small):
    model, variables, x, evaluate, _ = small
    v = random_variables(variables, 2)  # Non-trivial running statistics.
    full = evaluate(v, x)
    # Replace examples 2.. by very different ones: examples 0 and 1 must not notice.
    mixed = evaluate(v, jnp.concatenate([x[:2], 10 * x[2:] - 5]))
    for key in ("logits", "ret"):
        np.testing.assert_allclose(mixed[key][:2], full[key][:2], rtol=1e-5, atol=1e-5)
        assert not np.allclose(mixed[key][2:], full[key][2:])
    # ...and the running statistics are what is used.
    stats = jax.tree_util.tree_map(lambda a: a * 1.5, v["batch_stats"])
    other = evaluate({"params": v["params"], "batch_stats": stats}, x)
    assert not np.allclose(other["logits"], full["logits"])


def test_dropout_only_in_train(small):
    model, variables, x, evaluate, train = small
    v = random_variables(variables, 3)
    a = np.asarray(evaluate(v, x)["logits"])
    np.testing.assert_array_equal(a, evaluate(v, x)["logits"])
    logits = {seed: np.asarray(train(v, x, seed)[0]["logits"]) for seed in (1, 2)}
    np.testing.assert_array_equal(logits[1], train(v, x, 1)[0]["logits"])
    assert not np.allclose(logits[1], logits[2])
    # With dropout 0 the RNG no longer matters: the difference above was dropout.
    no_drop = ResNet(depth=18, **{**SMALL, "dropout": 0.0})
    train0 = jit(lambda seed: no_drop.apply(v, x, train=True, mutable=["batch_stats"],
                                            rngs={"dropout": jax.random.key(seed)})[0]["logits"])
    np.testing.assert_array_equal(train0(1), train0(2))


# --------------------------------------------------------------------- config

@pytest.mark.parametrize("arg,depth", [(None, 18), ("34", 34), ("quick", 18), ("34,quick", 34)])
def test_config_builds(arg, depth):
    c = resnet_config.get_config(arg)
    model = build_model(c.model, num_classes=2)
    assert isinstance(model, ResNet) and model.depth == depth
    assert c.model.plane_width <= c.data.window
    if arg is None:
        assert (c.train.batch_size, c.data.window, c.train.lr) == (16, 500, 2e-4)
        assert planes_shape(c.data.window, 10, c.model.plane_width) == (20, 25, 10)
    if arg == "quick":
        _, (out, _) = abstract_forward(model, (2, c.data.window, 10), train=True)
        assert out["logits"].shape == (2, 2)


def test_config_rejects_unknown_variant():
    with pytest.raises(ValueError, match="unknown variant"):
        resnet_config.get_config("fast")


# ----------------------------------------------------------------- torch twin

if torch is not None:
    tnn = torch.nn

    class TorchBlock(tnn.Module):
        """torchvision BasicBlock."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
            self.proj = None
            if stride != 1 or cin != cout:
                self.proj = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False),
                                           tnn.BatchNorm2d(cout, eps=1e-5, momentum=0.1))

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.proj is None else self.proj(x)))

    class TorchResNet(tnn.Module):
        """The original PyTorch model: 3×3/1 stem, BasicBlocks, avg pool, MLP head."""

        def __init__(self, depth, in_ch, width, head_features, dropout, num_classes):
            super().__init__()
            self.stem = tnn.Sequential(tnn.Conv2d(in_ch, width, 3, 1, 1, bias=False),
                                       tnn.BatchNorm2d(width), tnn.ReLU())
            blocks, cin = [], width
            for i, n in enumerate(STAGE_SIZES[depth]):
                for j in range(n):
                    blocks.append(TorchBlock(cin, width * 2**i, 2 if i > 0 and j == 0 else 1))
                    cin = width * 2**i
            self.blocks = tnn.Sequential(*blocks)
            head = []
            for f in head_features:
                head += [tnn.Dropout(dropout), tnn.Linear(cin, f), tnn.BatchNorm1d(f), tnn.ReLU()]
                cin = f
            self.mlp = tnn.Sequential(*head, tnn.Dropout(dropout))
            self.cls = tnn.Linear(cin, num_classes)
            self.ret = tnn.Linear(cin, 1)

        def trunk(self, x):
            return self.blocks(self.stem(x)).mean(dim=(2, 3))

        def forward(self, x):
            h = self.mlp(self.trunk(x))
            return self.cls(h), self.ret(h)[:, 0]

    def load_conv(tconv, kernel):
        tconv.weight.data = torch.from_numpy(np.asarray(kernel).transpose(3, 2, 0, 1).copy())

    def load_bn(tbn, p, s):
        tbn.weight.data = torch.from_numpy(np.asarray(p["scale"]).copy())
        tbn.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())
        tbn.running_mean.data = torch.from_numpy(np.asarray(s["mean"]).copy())
        tbn.running_var.data = torch.from_numpy(np.asarray(s["var"]).copy())

    def load_dense(tlin, p):
        tlin.weight.data = torch.from_numpy(np.asarray(p["kernel"]).T.copy())
        tlin.bias.data = torch.from_numpy(np.asarray(p["bias"]).copy())

    def load_flax(twin, depth, params, stats):
        load_conv(twin.stem[0], params["conv_init"]["kernel"])
        load_bn(twin.stem[1], params["bn_init"], stats["bn_init"])
        names = [f"stage{i + 1}_block{j + 1}" for i, n in enumerate(STAGE_SIZES[depth]) for j in range(n)]
        for tb, name in zip(twin.blocks, names):
            p, s = params[name], stats[name]
            load_conv(tb.conv1, p["Conv_0"]["kernel"])
            load_bn(tb.bn1, p["BatchNorm_0"], s["BatchNorm_0"])
            load_conv(tb.conv2, p["Conv_1"]["kernel"])
            load_bn(tb.bn2, p["BatchNorm_1"], s["BatchNorm_1"])
            if tb.proj is not None:
                load_conv(tb.proj[0], p["conv_proj"]["kernel"])
                load_bn(tb.proj[1], p["norm_proj"], s["norm_proj"])
        dense = [m for m in twin.mlp if isinstance(m, tnn.Linear)]
        bns = [m for m in twin.mlp if isinstance(m, tnn.BatchNorm1d)]
        for k, (lin, bn) in enumerate(zip(dense, bns)):
            load_dense(lin, params[f"head_dense{k + 1}"])
            load_bn(bn, params[f"head_bn{k + 1}"], stats[f"head_bn{k + 1}"])
        load_dense(twin.cls, params["head"]["cls"])
        load_dense(twin.ret, params["head"]["ret"])



@needs_torch
@pytest.mark.parametrize("depth", [18, 34])
def test_param_count_matches_torch_twin(depth):
    """ResNet-18/34 at full size on 10 channels: trunk and whole model."""
    twin = TorchResNet(depth, 10, 64, (512, 256), 0.3, 2)
    n_trunk = sum(p.numel() for m in (twin.stem, twin.blocks) for p in m.parameters())
    params = full_size_params(depth)["params"]
    assert count(trunk(params)) == n_trunk
    assert count(params) == sum(p.numel() for p in twin.parameters())


@needs_torch
def test_eval_outputs_match_torch_twin(small):
    """Same weights and running stats → same eval outputs (checks layout, padding, strides)."""
    model, variables, x, evaluate, _ = small
    v = random_variables(variables, 1)
    out = evaluate(v, x)
    twin = TorchResNet(18, F, SMALL["width"], SMALL["head_features"], SMALL["dropout"], 2)
    load_flax(twin, 18, v["params"], v["batch_stats"])
    twin.eval()
    planes = np.asarray(to_planes(x, SMALL["plane_width"])).transpose(0, 3, 1, 2)  # NHWC → NCHW.
    with torch.no_grad():
        logits, ret = twin(torch.from_numpy(planes.copy()))
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["ret"], ret.numpy(), rtol=1e-4, atol=1e-4)
