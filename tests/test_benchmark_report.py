"""benchmarks/train_step.py's report plumbing: the markdown section writer and the
device check (the timing itself is a benchmark, not a test)."""

import jax
import pytest

pytest.importorskip("torch")

from benchmarks import train_step  # noqa: E402

DOC = """# Performance

## Loader

loader table

## Train step: JAX vs PyTorch

### Quick shapes (`--quick`)

old quick table

### Quick and full-scale shapes

old full table

## Later section

kept
"""


def test_write_section_replaces_only_its_subsection(tmp_path):
  path = tmp_path / "perf.md"
  path.write_text(DOC)
  train_step.write_section(str(path), "new quick table", "### Quick shapes (`--quick`)")
  train_step.write_section(str(path), "gpu table", "### Quick shapes (`--quick`) on a GPU, bf16")
  train_step.write_section(str(path), "epoch table", "### H200, bfloat16",
                           section="## ResNet-18 epoch", order=())
  text = path.read_text()
  assert "old quick table" not in text
  for kept in ("loader table", "old full table", "## Later section\n\nkept"):
    assert kept in text
  # Known subsections first, in their order; a new one after them; other sections stay put.
  order = ["## Loader", "### Quick shapes (`--quick`)\n\nnew quick table",
           "### Quick and full-scale shapes", "### Quick shapes (`--quick`) on a GPU, bf16",
           "## Later section", "## ResNet-18 epoch\n\n### H200, bfloat16\n\nepoch table"]
  positions = [text.index(s) for s in order]
  assert positions == sorted(positions), positions
  assert text.count("## Train step: JAX vs PyTorch") == 1


def test_write_section_creates_missing_file(tmp_path):
  path = tmp_path / "sub" / "perf.md"
  train_step.write_section(str(path), "t", "### Quick shapes (`--quick`)")
  assert path.read_text() == ("# Performance\n\n## Train step: JAX vs PyTorch\n\n"
                              "### Quick shapes (`--quick`)\n\nt\n")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU-only answer")
def test_gpu_device_is_refused_without_a_gpu():
  with pytest.raises(SystemExit, match="--device=gpu: JAX's default backend is 'cpu'"):
    train_step.resolve_device("gpu")
  assert train_step.resolve_device("auto") == "cpu"
