"""benchmarks/train_step.py's report plumbing: the markdown section writer and the
device check (the timing itself is a benchmark, not a test)."""

import argparse

import jax
import numpy as np
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


def _row(model, ratio, eager_note=None):
  jax_sps = 100.0
  return {"model": model, "shape": "quick", "T": 64, "batch": 128, "params_jax": 10,
          "params_torch": 10, "compile_s": 1.0, "cached": False, "flops": 1e9,
          "flops_source": "XLA", "threads": 2, "compile_note": "not run",
          "compile_torch": None, "compiled_sps": None, "eager_note": eager_note,
          "jax_sps": jax_sps, "jax_spread": 0.1, "eager_spread": 0.1,
          "eager_sps": None if ratio is None else jax_sps / ratio, "ratio": ratio,
          "ratio_lo": None if ratio is None else ratio * 0.9,
          "ratio_hi": None if ratio is None else ratio * 1.1, "gflops": 12.8}


def test_report_summary_skips_rows_without_a_ratio_and_marks_partial_runs():
  args = argparse.Namespace(
      device="cpu", dtype="float32", repeats=3, target_s=0.25, full_batch=0,
      torch_compile="none", cache_dir="", quick=True)
  run = {"t_start": 0.0, "cpu": "test CPU", "cores": 2, "gpu": None, "load": 0.0,
         "peak_jax": 100.0, "peak_torch": 100.0, "kept": True, "command": "cmd"}
  rows = [_row("gru", 2.0), _row("lstm", None, "n/a (RuntimeError)"), _row("moe", 0.5)]
  notes, tab, lowest, geomean, missing = train_step.report(args, rows, 4, **run)
  assert lowest == 0.5
  assert geomean == pytest.approx(np.exp(np.mean(np.log([2.0, 0.5]))))  # = 1.
  assert missing == ["lstm/quick"]
  assert notes.startswith("Partial: 3 of 4 rows")
  assert "none for lstm/quick" in notes
  lstm_line = next(line for line in tab.splitlines() if line.startswith("| lstm"))
  assert "n/a (RuntimeError)" in lstm_line and "| n/a |" in lstm_line
  notes, *_ = train_step.report(args, rows, 3, **run)
  assert not notes.startswith("Partial")
