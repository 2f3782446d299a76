"""ResNet on feature planes, original settings (ResNet-18, T=500 as 20×25 planes, batch 16, AdamW 2e-4).

python -m jaxquant.main --config=configs/resnet.py          # full scale, ResNet-18
python -m jaxquant.main --config=configs/resnet.py:34       # full scale, ResNet-34
python -m jaxquant.main --config=configs/resnet.py:quick    # minutes on a 2-core CPU
(variants combine: configs/resnet.py:34,quick)
"""

import ml_collections

from configs import default

_VARIANTS = ("quick", "34")


def get_config(arg=None):
  c = default.get_config()
  c.name = "resnet"
  # Replace the default (GRU) model settings: keys must be ResNet attributes.
  c.model = ml_collections.ConfigDict()
  c.model.name = "resnet"
  c.model.depth = 18  # 18 or 34.
  c.model.width = 64  # Base channels: stages have 64, 128, 256, 512.
  c.model.plane_width = 25  # Bars per plane row: T=500 → 20×25 planes.
  c.model.head_features = (512, 256)  # MLP head after global pooling.
  c.model.dropout = 0.3
  c.model.bn_axis_name = None  # Set with a device axis to sync BatchNorm statistics.
  # Convolutions: "xla" (nn.Conv), "patches" (slices + one matmul: XLA:CPU's conv
  # backward is slow) or "auto" (patches on CPU only). Same parameters and outputs.
  c.model.conv_impl = "auto"
  c.train.batch_size = 16

  variants = [v for v in (arg or "").split(",") if v]
  unknown = [v for v in variants if v not in _VARIANTS]
  if unknown:
    raise ValueError(f"unknown variant {unknown[0]!r} of configs/resnet.py "
                     f"(known: {', '.join(_VARIANTS)}; combine with ',')")
  if "34" in variants:
    c.name = "resnet34"
    c.model.depth = 34
  if "quick" in variants:
    c.name += "-quick"
    c.data.window = 64
    c.model.plane_width = 8  # 8×8 planes.
    c.model.width = 8  # Stages of 8, 16, 32, 64 channels.
    c.model.head_features = (64, 32)
    c.train.epochs = 8
    c.train.batch_size = 128
    c.train.lr = 2e-3
    c.train.patience = 4
  return c
