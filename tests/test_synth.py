"""Tests for the synthetic market (jaxquant.data.synth)."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxquant.data import synth
from jaxquant.data.shards import load_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
O, H, L, C, V, OI = range(6)


def _log_returns(bars):
    return np.diff(np.log(bars[:, C]))


def _oi_lead_corr(market):
    """corr(d log OI_{t-1}, r_t) pooled over instruments, and the sample size."""
    xs, ys = [], []
    for _, _, bars in market:
        d_oi = np.diff(np.log(bars[:, OI]))
        r = _log_returns(bars)
        xs.append(d_oi[:-1])
        ys.append(r[1:])
    x, y = np.concatenate(xs), np.concatenate(ys)
    return np.corrcoef(x, y)[0, 1], x.size


@pytest.fixture(scope="module")
def market_signal():
    return synth.generate_market(instruments=4, days=30, signal=1.0, seed=0)


@pytest.fixture(scope="module")
def market_null():
    return synth.generate_market(instruments=4, days=30, signal=0.0, seed=0)


def test_determinism():
    a = synth.generate_market(instruments=2, days=3, seed=7)
    b = synth.generate_market(instruments=2, days=3, seed=7)
    c = synth.generate_market(instruments=2, days=3, seed=8)
    for (na, ta, ba), (nb, tb, bb), (_, tc, bc) in zip(a, b, c):
        assert na == nb
        np.testing.assert_array_equal(ta, tb)
        np.testing.assert_array_equal(ba, bb)
        np.testing.assert_array_equal(ta, tc)  # same calendar...
        assert not np.array_equal(ba, bc)  # ...different prices


def test_instrument_independent_of_count():
    small = synth.generate_market(instruments=2, days=2, seed=3)
    big = synth.generate_market(instruments=10, days=2, seed=3)
    for (n1, t1, b1), (n2, t2, b2) in zip(small, big):
        assert n1 == n2
        np.testing.assert_array_equal(b1, b2)
    names = [n for n, _, _ in big]
    assert len(set(names)) == 10 and names[0] == "SYN.rb" and names[-1].startswith("SYN.x")


def test_calendar():
    days = 7
    ts = synth.generate_market(instruments=1, days=days)[0][1]
    assert ts.dtype == np.int64 and ts.size == 360 * days
    assert np.all(np.diff(ts) > 0)
    dt = ts.astype("datetime64[ns]")
    dates = dt.astype("datetime64[D]")
    uniq, counts = np.unique(dates, return_counts=True)
    assert uniq.size == days and np.all(counts == 360)
    assert uniq[0] == np.datetime64("2024-01-02")
    assert np.all(np.is_busday(uniq))  # weekdays only (Jan 6/7 skipped)
    minute = ((dt - dates) // np.timedelta64(1, "m")).astype(int)
    in_session = (((minute >= 540) & (minute < 690)) | ((minute >= 810) & (minute < 900))
                  | ((minute >= 1260) & (minute < 1380)))
    assert in_session.all()
    assert np.all(ts % 60_000_000_000 == 0)  # bar start on whole minutes


def test_ohlc_consistency(market_signal):
    for _, _, b in market_signal:
        assert np.all(np.isfinite(b)) and np.all(b > 0)
        assert np.all(b[:, L] <= np.minimum(b[:, O], b[:, C]))
        assert np.all(b[:, H] >= np.maximum(b[:, O], b[:, C]))
        np.testing.assert_array_equal(b[1:, O], b[:-1, C])  # open = previous close
        assert np.all(b[:, V] >= 1) and np.all(b[:, V] == np.round(b[:, V]))


def test_no_signal_means_no_predictability(market_null):
    corr, n = _oi_lead_corr(market_null)
    assert abs(corr) < 4 / math.sqrt(n), corr


def test_signal_is_planted(market_signal):
    corr, n = _oi_lead_corr(market_signal)
    assert corr > 6 / math.sqrt(n), (corr, n)


def test_signal_strength_matches_formula(market_signal):
    """Recover SIGNAL_BETA from the latent series: r_t/sigma_t ~ beta*s_{t-1} + eps_t."""
    z, s = [], []
    for i in range(4):
        sim = synth._simulate(i, 30, 1.0, 0)
        np.testing.assert_allclose(_log_returns(sim["bars"]), sim["r"][1:], rtol=1e-9, atol=1e-12)
        z.append(sim["r"] / sim["sigma"])
        s.append(sim["flow_prev"])
    z, s = np.concatenate(z), np.concatenate(s)
    beta = (s @ z) / (s @ s)
    se = 1 / math.sqrt(s @ s)  # unit-variance noise
    assert abs(beta - synth.SIGNAL_BETA) < 4 * se, (beta, se)


def test_latent_flow_statistics():
    sim = synth._simulate(0, 60, 1.0, 1)
    s = sim["flow"]
    assert abs(s.var() - 1) < 0.3  # stationary unit variance (slowly mixing: loose)
    lag1 = np.corrcoef(s[:-1], s[1:])[0, 1]
    assert abs(lag1 - synth.FLOW_PHI) < 0.01


def test_fat_tails_and_vol_shape():
    sim = synth._simulate(0, 30, 1.0, 2)
    z = sim["r"] / sim["sigma"] - synth.SIGNAL_BETA * sim["flow_prev"]
    excess_kurt = np.mean((z - z.mean()) ** 4) / z.var() ** 2 - 3
    assert excess_kurt > 1, excess_kurt  # Student-t(4); a Gaussian would give ~0
    assert abs(z.var() - 1) < 0.1
    # sigma is recomputable from the documented parameters (hand-written U-shape).
    per_day = sim["sigma"].reshape(30, 360) / np.where(sim["regime"] == 1, synth.SIGMA_HIGH,
                                                       synth.SIGMA_LOW).reshape(30, 360)
    expect = np.ones(360)
    for a, b in [(0, 150), (150, 240), (240, 360)]:
        expect[a:a + 10] = expect[b - 10:b] = 1.5
        expect[a] = 3.0
    np.testing.assert_allclose(per_day, np.tile(expect, (30, 1)))


def test_no_signal_market_is_an_iid_random_walk():
    """signal=0: constant volatility, so neither direction nor size of moves is predictable."""
    sim = synth._simulate(0, 30, 0.0, 2)
    np.testing.assert_allclose(sim["sigma"], synth.SIGMA_FLAT)
    r = sim["r"]
    n = len(r)
    for series in (r, np.abs(r)):  # no autocorrelation in returns or in their size
        x = series - series.mean()
        assert abs((x[1:] @ x[:-1]) / (x @ x)) < 4 / math.sqrt(n)
    excess_kurt = np.mean((r - r.mean()) ** 4) / r.var() ** 2 - 3
    assert excess_kurt > 1, excess_kurt  # still fat-tailed


def test_bad_parameters():
    for kw in [dict(instruments=0), dict(days=0), dict(signal=-0.1), dict(signal=float("nan"))]:
        with pytest.raises(ValueError):
            synth.generate_market(**kw)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "jaxquant.data.synth", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_cli_writes_loadable_market(tmp_path):
    out = tmp_path / "mkt"
    p = _cli(f"--out={out}", "--instruments=3", "--days=2", "--signal=0.5", "--seed=4")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.strip().splitlines()) == 1 and "3 instruments" in p.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 4 and manifest["signal"] == 0.5 and manifest["days"] == 2
    assert manifest["signal_beta"] == synth.SIGNAL_BETA and "s_{t-1}" in manifest["description"]
    expected = synth.generate_market(instruments=3, days=2, signal=0.5, seed=4)
    loaded = list(load_dir(out))
    assert manifest["instrument_rows"] == {n: ts.size for n, ts, _ in expected}
    assert sorted(n for n, _, _ in expected) == [n for n, _, _ in loaded]
    by_name = {n: (t, b) for n, t, b in loaded}
    for name, ts, bars in expected:
        np.testing.assert_array_equal(by_name[name][0], ts)
        np.testing.assert_array_equal(by_name[name][1], bars)


def test_cli_bad_values(tmp_path):
    out = f"--out={tmp_path / 'm'}"
    # Range errors (all via _check_params, see test_bad_parameters), a flag
    # parse error and a missing --out.
    cases = [[out, "--signal=-1"], [out, "--days=abc"], []]
    # Launched together: each run is mostly interpreter start-up.
    procs = [subprocess.Popen([sys.executable, "-m", "jaxquant.data.synth", *args], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for args in cases]
    for args, p in zip(cases, procs):
        _, err = p.communicate(timeout=60)
        assert p.returncode == 2, (args, p.returncode, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "m").exists()
