"""ResNet on feature planes, original settings (ResNet-18, T=500 as 20×25 planes, batch 16, AdamW 2e-4).

python -m jaxquant.main --config=configs/resnet.py          # full scale, ResNet-18
python -m jaxquant.main --config=configs/resnet.py:34       # full scale, ResNet-34
python -m jaxquant.main --config=configs/resnet.py:quick    # minutes on a 2-core CPU
(variants combine: configs/resnet.py:34,quick)
"""

import ml_collections

from configs import common
from configs import default


def get_config(arg=None):
  variants = common.parse_arg(arg, __file__, common.QUICK, "34")
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

  if "34" in variants:
    c.name = "resnet34"
    c.model.depth = 34
  if common.QUICK in variants:
    common.apply_quick(c)
    c.model.plane_width = 8  # 8×8 planes.
    c.model.width = 8  # Stages of 8, 16, 32, 64 channels.
    c.model.head_features = (64, 32)
  return c
