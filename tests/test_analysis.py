"""The analysis layer: estimators on synthetic data with known answers, model surgery on small
networks, and analyze_run / write_report end to end on the study's checkpoints (tiny settings)."""
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from conftest import STUDY_CHECKPOINTS as STUDY
from timescale_kernels.analysis import (StreamMoments, ablate, ablation_study, accuracy, analyze_run,
                                        autocorrelation, dimensionality, fit_timescales,
                                        forgetting_matrix, head_for, perturb, perturbation_study, simulate,
                                        stream_accuracy, tau_stats, write_report)
from timescale_kernels.analysis.accuracy import stream_labels
from timescale_kernels.models import MemoryNet


pytestmark = pytest.mark.usefixtures("one_thread")


def ar1(a, trials=4, steps=20_000, seed=0):
    """AR(1) series x_t = a x_{t-1} + noise, (trials, steps, len(a)); timescale -1 / ln(a)."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((trials, steps, len(a)))
    return np.stack([lfilter([1.0], [1.0, -coef], noise[:, :, j], axis=1) for j, coef in enumerate(a)], axis=2)


def small_net(hidden=12, heads=3, seed=0):
    torch.manual_seed(seed)
    return MemoryNet("leaky", hidden, num_heads=heads, backend="reference")


# -- timescale estimators ---------------------------------------------------------------------------

def test_ar1_timescales_recovered():
    a = np.array([0.5, 0.8, 0.9, 0.95])
    fit = fit_timescales(ar1(a), max_lag=30, full=True)
    true = -1.0 / np.log(a)
    assert list(fit.reason) == ["ok"] * 4
    np.testing.assert_allclose(fit.tau, true, rtol=0.12)


def test_sum_of_two_ar1_picks_double_and_the_slower_tau():
    fast, slow = ar1([0.5], seed=1)[..., 0], ar1([0.95], seed=2)[..., 0]
    fit = fit_timescales((fast + 0.5 * slow)[..., None], max_lag=30, full=True)
    assert fit.model[0] == 2
    assert fit.tau[0] == pytest.approx(-1 / math.log(0.95), rel=0.15)
    assert fit.tau_fast[0] == pytest.approx(-1 / math.log(0.5), rel=0.3)


def test_silent_and_nonfinite_neurons_get_nan_with_reason():
    x = ar1([0.8], trials=2, steps=4000)
    x = np.concatenate([x, np.full_like(x, 3.0), x.copy()], axis=2)
    x[1, 10, 2] = np.nan
    with pytest.warns(RuntimeWarning, match="silent: 1"):
        fit = fit_timescales(torch.as_tensor(x), max_lag=20, full=True)
    assert fit.reason.tolist() == ["ok", "silent", "nonfinite"]
    assert np.isfinite(fit.tau[0]) and np.isnan(fit.tau[1:]).all()
    assert fit.summary()["failures"] == {"nonfinite": 1, "silent": 1}


def test_timescale_longer_than_the_bound_is_nan_at_bound():
    with pytest.warns(RuntimeWarning, match="at_bound"):
        tau = fit_timescales(ar1([0.9999], trials=2, steps=5000), max_lag=30, tau_max=20.0)
    assert np.isnan(tau[0])


def test_failed_fits_are_reported(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")
    monkeypatch.setattr("scipy.optimize.curve_fit", refuse)  # timescales imports it at each fit
    with pytest.warns(RuntimeWarning, match="fit_failed: 2"):
        fit = fit_timescales(ar1([0.5, 0.8], trials=1, steps=2000), max_lag=10, full=True)
    assert np.isnan(fit.tau).all() and fit.model.tolist() == [0, 0]


def test_autocorrelation_matches_direct_sums():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 200, 4)).cumsum(1)
    ac = autocorrelation(x, max_lag=5)
    xc = x - x.mean(1, keepdims=True)
    direct = np.stack([(xc[:, k:] * xc[:, :200 - k]).sum(1).mean(0) / (200 - k) for k in range(6)], 1)
    np.testing.assert_allclose(ac, direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(autocorrelation(x[0], 5), autocorrelation(x[:1], 5))


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def test_stream_moments_equal_the_fft_estimator_for_any_chunking(engine):
    rng = np.random.default_rng(4)
    x = 5.0 + rng.standard_normal((600, 7)).cumsum(0) * 0.1     # time-major, offset from zero
    x[:, 3] = 2.5                                                # a constant series
    moments = StreamMoments(7, max_lag=12, engine=engine)
    start = 0
    for size in (5, 3, 200, 1, 391):                             # chunks shorter and longer than max_lag
        moments.update(torch.as_tensor(x[start:start + size], dtype=torch.float32))
        start += size
    expected = autocorrelation(x.astype(np.float32)[None], 12)
    np.testing.assert_allclose(moments.autocovariance(), expected, rtol=2e-4, atol=1e-7)
    assert (moments.autocovariance()[3] == 0).all()


def test_simulate_streaming_statistics_match_the_recorded_activity():
    model = small_net()
    sim = simulate(model, trials=3, steps=300, burn_in=20, chunk=64, max_lag=10, record=True)
    assert sim.activity.shape == (3, 300, 12)
    np.testing.assert_allclose(sim.ac, autocorrelation(sim.activity, 10), rtol=1e-4, atol=1e-9)
    pop = autocorrelation(sim.activity.sum(2, keepdims=True), 10)[0]
    np.testing.assert_allclose(sim.ac_population, pop, rtol=1e-4, atol=1e-9)
    cov = np.stack([np.cov(a.astype(np.float64), rowvar=False) for a in sim.activity])
    np.testing.assert_allclose(sim.covariance, cov, rtol=1e-4, atol=1e-9)
    # The state is carried across chunks: another chunk length gives the same activity.
    again = simulate(model, trials=3, steps=300, burn_in=20, chunk=1000, max_lag=10, record=True)
    np.testing.assert_allclose(again.activity, sim.activity, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("core", ["gru", "lstm"])
def test_simulate_other_cores(core):
    torch.manual_seed(0)
    model = MemoryNet(core, 10, num_heads=1)
    sim = simulate(model, trials=2, steps=100, burn_in=5, chunk=30, max_lag=5, record=True)
    np.testing.assert_allclose(sim.ac, autocorrelation(sim.activity, 5), rtol=1e-4, atol=1e-9)


def test_analyses_see_the_tensors_a_constrained_network_runs_with():
    """A network with a connectivity mask, Dale's signs and softplus tau: the op path of simulate
    equals the module's own forward, and tau_stats and the ablation report its time constants."""
    torch.manual_seed(0)
    hidden = 12
    mask = (torch.rand(hidden, hidden) < 0.5).float()
    signs = torch.where(torch.arange(hidden) < 9, 1.0, -1.0)
    model = MemoryNet("leaky", hidden, num_heads=1, backend="reference", connectivity_mask=mask,
                      dale_signs=signs, tau_parameterisation="softplus")
    with torch.no_grad():
        model.rnn.tau.copy_(torch.linspace(-2.0, 3.0, hidden))
    own = simulate(model, trials=2, steps=80, burn_in=5, chunk=40, max_lag=4, record=True)
    op = simulate(model, trials=2, steps=80, burn_in=5, chunk=40, max_lag=4, record=True, backend="reference")
    np.testing.assert_allclose(op.activity, own.activity, rtol=1e-5, atol=1e-6)
    tau = model.rnn.time_constants().detach().numpy()
    assert not np.allclose(tau, np.maximum(model.rnn.tau.detach().numpy(), 1.0))  # softplus, not clamp
    assert tau_stats(model)["mean"] == pytest.approx(float(tau.mean()), rel=1e-6)
    res = ablation_study(model, "parity", 2, 0, k=2, batches=1, batch_size=8)
    assert res["short"]["neurons"] == [0, 1] and res["long"]["neurons"] == [11, 10]
    np.testing.assert_allclose(res["long"]["tau"], tau[[11, 10]], rtol=1e-6)


def test_tau_stats_use_the_clamped_tau():
    tau = torch.tensor([0.5, 1.0, 2.0, 3.0])
    s = tau_stats(tau)
    assert s["mean"] == pytest.approx(1.75) and s["min"] == 1.0 and s["fraction_at_1"] == 0.5
    assert sum(s["hist"]["counts"]) == 4


# -- dimensionality ---------------------------------------------------------------------------------

def test_dimensionality_of_known_rank():
    rng = np.random.default_rng(5)
    basis, _ = np.linalg.qr(rng.standard_normal((30, 10)))       # 10 orthonormal directions in 30-D
    scores = rng.standard_normal((2, 5000, 10))
    scores = scores / scores.std(1, keepdims=True)               # equal variance per component
    data = scores @ basis.T
    d = dimensionality(data, threshold=0.9)
    assert d["per_trial"] == [9, 9]
    assert dimensionality(data, threshold=0.999999)["per_trial"] == [10, 10]
    cov = np.stack([np.cov(t, rowvar=False) for t in data])
    assert dimensionality(covariance=cov)["per_trial"] == [9, 9]


# -- accuracy, ablation, perturbation -----------------------------------------------------------------

def test_stream_labels_brute_force():
    bits = torch.randint(0, 2, (40, 3), generator=torch.Generator().manual_seed(6))
    for N in (1, 3, 7):
        par, dms = stream_labels("parity", bits, N), stream_labels("dms", bits, N)
        for t in range(N - 1, 40):
            assert torch.equal(par[t - N + 1], bits[t - N + 1:t + 1].sum(0) % 2)
            assert torch.equal(dms[t - N + 1], (bits[t - N + 1] == bits[t]).long())


def test_accuracy_is_reproducible_and_checks_the_device():
    model = small_net()
    a = accuracy(model, "parity", 3, 0, batches=2, batch_size=16, seed=1)
    assert a == accuracy(model, "parity", 3, 0, batches=2, batch_size=16, seed=1)
    assert 0.0 <= stream_accuracy(model, "dms", 3, 1, batches=1, batch_size=4, length=50, warmup=5) <= 1.0
    with pytest.raises(ValueError, match="device"):
        accuracy(model, "parity", 3, 0, device="meta")


def test_ablate_zeroes_exactly_the_chosen_neurons_and_copies():
    model = small_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = ablate(model, [1, 3], heads=2)
    for k, v in model.state_dict().items():                      # the original is untouched
        assert torch.equal(v, before[k]), k
    w, w0 = out.rnn.weight_hh, before["rnn.weight_hh"]
    keep = [i for i in range(12) if i not in (1, 3)]
    assert (w[[1, 3], :] == 0).all() and (w[:, [1, 3]] == 0).all()
    assert torch.equal(w[keep][:, keep], w0[keep][:, keep])
    assert (out.rnn.weight_ih[[1, 3]] == 0).all()
    assert torch.equal(out.rnn.weight_ih[keep], before["rnn.weight_ih"][keep])
    assert (out.readout.heads[2].weight[:, [1, 3]] == 0).all()
    assert torch.equal(out.readout.heads[0].weight, before["readout.heads.0.weight"])  # other heads kept
    assert torch.equal(out.rnn.tau, before["rnn.tau"])
    with pytest.raises(ValueError, match="neurons"):
        ablate(model, [12])


def test_ablation_study_picks_the_tau_extremes():
    model = small_net()
    with torch.no_grad():
        model.rnn.tau.copy_(torch.arange(12, dtype=torch.float32) * 0.5)
    res = ablation_study(model, "parity", 2, 0, k=2, batches=1, batch_size=8)
    assert res["short"]["neurons"] == [0, 1] and res["long"]["neurons"] == [11, 10]
    assert res["short"]["tau"] == [1.0, 1.0]                     # clamp(tau, 1)


def test_perturbation_sizes_and_eps_zero_gives_relative_one():
    model = small_net()
    gen = torch.Generator().manual_seed(0)
    w0, tau0 = model.rnn.weight_hh.detach().clone(), model.rnn.tau.detach().clone()
    pw = perturb(model, "weights", 0.3, gen)
    size = torch.linalg.norm(pw.rnn.weight_hh - w0).item()
    assert size == pytest.approx(0.3 * torch.linalg.norm(w0).item(), rel=1e-5)
    pt = perturb(model, "tau", 0.3, gen)
    assert (pt.rnn.tau >= tau0).all()
    assert torch.linalg.norm(pt.rnn.tau - tau0).item() == pytest.approx(0.3 * torch.linalg.norm(tau0).item(), rel=1e-5)
    assert torch.equal(model.rnn.weight_hh, w0) and torch.equal(model.rnn.tau, tau0)
    res = perturbation_study(model, "parity", 2, 0, eps=(0.0, 0.5), trials=2, batches=1, batch_size=16)
    for target in ("weights", "tau"):
        assert res[target]["relative"][0] == [1.0, 1.0]
        assert len(res[target]["relative_mean"]) == 2 and res[target]["eps"] == [0.0, 0.5]
    # a grid per target, read per target by the report and the sweep's CSV
    res = perturbation_study(model, "parity", 2, 0, eps={"weights": (0.0, 0.215), "tau": (0.0, 0.0464, 0.215)},
                             trials=1, batches=1, batch_size=16)
    assert res["eps"] == [0.0, 0.215] and res["tau"]["eps"] == [0.0, 0.0464, 0.215]
    assert len(res["weights"]["relative_mean"]) == 2 and len(res["tau"]["relative_mean"]) == 3
    from timescale_kernels.analysis.report import _perturbed
    from timescale_kernels.experiments.sweep.results import _perturb
    assert _perturbed({"p": res}, "p", "tau", 0.0464) == res["tau"]["relative_mean"][1]
    assert _perturb(res, "tau", 0.0464) == res["tau"]["relative_mean"][1]
    assert _perturb(res, "weights", 0.0464) is None  # not in the weights' grid
    with pytest.raises(ValueError, match="every target"):
        perturbation_study(model, "parity", 2, 0, eps={"weights": (0.0,)}, trials=1, batches=1, batch_size=16)


def test_forgetting_matrix_and_head_choice():
    model = small_net(heads=2)
    assert head_for({2: 0, 3: 1}, 3) == 1 and head_for({2: 0, 3: 1}, 9) == 1 and head_for({5: 0}, 2) == 0
    m = forgetting_matrix([("a", model, {2: 0}), ("b", model, {2: 0, 3: 1})], "parity", [2, 3],
                          batches=1, batch_size=8)
    assert np.asarray(m["accuracy"]).shape == (2, 2)
    assert m["trained"] == [[True, False], [True, True]]


# -- end to end -------------------------------------------------------------------------------------

TINY = dict(trials=2, steps=1000, burn_in=50, max_lag=30, ablate_k=2, eps=(0.0, 0.215), perturb_trials=1,
            eval_batches=1, batch_size=48, length_factors=(1, 2), extra_N=1, study_trials=2, study_ablate_k=3,
            progress=False)



def fake_run(path, core, curriculum, Ns_list):
    """A run directory as the experiment runner writes it, with small untrained networks."""
    from timescale_kernels.checkpoints import save_checkpoint
    (path / "checkpoints").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"task": "parity", "curriculum": curriculum, "seed": 3}))
    (path / "metrics.csv").write_text("epoch,N_low,N_high,N_reached\n1,2,2,2\n2,2,3,3\n")
    for i, Ns in enumerate(Ns_list):
        torch.manual_seed(i)
        model = MemoryNet(core, 12, num_heads=len(Ns), **({"backend": "reference"} if core == "leaky" else {}))
        heads = {str(n): k for k, n in enumerate(Ns)}           # string keys, as after a JSON round trip
        save_checkpoint(path / "checkpoints" / f"N{min(Ns)}-N{max(Ns)}.pt", model, {"Ns": Ns, "head_for_N": heads})


def test_analyze_run_on_run_directories(tmp_path):
    small = dict(TINY, steps=200, burn_in=10, max_lag=10, batch_size=8)
    fake_run(tmp_path / "multi", "leaky", "multi", [[2], [2, 3]])
    fake_run(tmp_path / "gru", "gru", "single", [[2]])
    multi = analyze_run(tmp_path / "multi", **small)
    assert [c["label"] for c in multi["checkpoints"]] == ["N2-N2", "N2-N3"]
    assert multi["checkpoints"][1]["head_for_N"] == {"2": 0, "3": 1}
    assert multi["forgetting"]["trained"] == [[True, False], [True, True]]
    assert (tmp_path / "multi" / "analysis" / "tau_vs_N.png").is_file()
    gru = analyze_run(tmp_path / "gru", tmp_path / "gru-out", **small)
    (ck,) = gru["checkpoints"]
    assert "tau" not in ck and "ablation" not in ck and len(ck["tau_net"]["values"]) == 12
    report = write_report([tmp_path / "multi", tmp_path / "gru-out"], tmp_path / "r.md").read_text()
    with pytest.raises(FileNotFoundError, match="neither config.json"):
        analyze_run(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()
    assert "| multi | multi | 3 | parity | 2 | 3 | 2 |" in report        # curriculum, seed, N reached, epochs
    assert "| gru-out | single | 3 | parity | 1 |" in report


# -- end to end on the study's checkpoints --------------------------------------------------------------

@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    if not STUDY.is_dir():
        pytest.skip(f"the study's checkpoints are not at {STUDY}")
    out = tmp_path_factory.mktemp("analysis")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        multi = analyze_run(STUDY / "multi_head_parity", out / "multi", **TINY)
        single = analyze_run(STUDY / "single_head_parity", out / "single", only=["N11-N11"], study_tau_net=False,
                             **TINY)
    return out, multi, single


def test_analyze_run_on_the_study_checkpoints(analysed):
    out, multi, single = analysed
    assert multi["curriculum"] == "multi" and single["curriculum"] == "single"
    (ck,) = multi["checkpoints"]
    assert ck["label"] == "N2-N11" and ck["N"] == 11 and ck["head"] == 9
    assert min(ck["accuracy"].values()) >= 0.95                  # every N in 2..11, unperturbed
    blob = torch.load(STUDY / "multi_head_parity" / "rnn_N2_N11.pt", map_location="cpu", weights_only=True)
    tau = blob["state_dict"]["parameterlist.0"]
    assert ck["tau"]["mean"] == pytest.approx(float(tau.clamp(min=1).double().mean()), rel=1e-6)
    assert ck["tau"]["std"] == pytest.approx(float(tau.clamp(min=1).double().std(unbiased=False)), rel=1e-6)
    tn = ck["tau_net"]
    assert len(tn["values"]) == 500 and tn["neurons"]["n_ok"] + sum(tn["neurons"]["failures"].values()) == 500
    assert all(v is None or 0 < v < 100 for v in tn["values"])
    assert all((v is None) == (r != "ok") for v, r in zip(tn["values"], tn["reasons"]))
    assert 1 <= ck["dimensionality"]["mean"] <= 500
    assert ck["perturbation"]["weights"]["relative"][0] == [1.0] and ck["perturbation"]["eps"] == [0.0, 0.215]
    assert len(ck["ablation"]["long"]["accuracy"]) == 2
    # Both estimators of tau_net and both measures of ablation and perturbation, each labelled.
    assert tn["estimator"] == "ours" and ck["tau_net_study"]["estimator"] == "study"
    assert len(ck["tau_net_study"]["values"]) == 500 and "tau_net_study" not in single["checkpoints"][0]
    assert ck["ablation"]["measure"] == "ours" and ck["ablation_study"]["measure"] == "study"
    assert ck["ablation_study"]["ablated_head"] == 0 and ck["ablation_study"]["metric"] == "stream"
    assert len(ck["ablation_study"]["long"]["accuracy"]) == 3  # study_ablate_k, apart from ours (ablate_k)
    assert ck["perturbation_study"]["measure"] == "study" and len(ck["perturbation_study"]["tau"]["accuracy"][0]) == 2
    # the study's grid per target (0 and 10 strengths up to 10 for W, 0 and 13 for tau), ours shared
    assert len(ck["perturbation_study"]["weights"]["eps"]) == 11 and len(ck["perturbation_study"]["tau"]["eps"]) == 14
    assert ck["perturbation_study"]["tau"]["eps"][-1] == pytest.approx(10) and ck["perturbation"]["tau"]["eps"] == [0.0,
                                                                                                                 0.215]
    assert "0.5" in ck["perturbation_study"]["relative_definition"]
    assert ck["generalisation"]["length"]["lengths"] == [45, 90] and ck["generalisation"]["N"]["Ns"] == [12]
    # Forgetting: every checkpoint on every N; the single-head run is analysed in depth only at N = 11.
    assert single["forgetting"]["Ns"] == [5, 11] and np.asarray(single["forgetting"]["accuracy"]).shape == (2, 2)
    assert [c["label"] for c in single["checkpoints"]] == ["N11-N11"]
    assert single["checkpoints"][0]["accuracy"]["11"] >= 0.9
    for d in ("multi", "single"):
        saved = json.loads((out / d / "analysis.json").read_text())
        assert saved["checkpoints"][0]["label"] == (multi if d == "multi" else single)["checkpoints"][0]["label"]
        md = (out / d / "analysis.md").read_text()
        for name in saved["checkpoints"][0]["figures"].values():
            assert (out / d / name).is_file() and name in md
        assert (out / d / "forgetting.png").is_file()


def test_stream_accuracy_of_a_study_network():
    if not STUDY.is_dir():
        pytest.skip(f"the study's checkpoints are not at {STUDY}")
    from timescale_kernels.checkpoints import load_study_checkpoint
    model = load_study_checkpoint(STUDY / "multi_head_parity" / "rnn_N2_N11.pt")
    assert stream_accuracy(model, "parity", 11, 9, batches=1, batch_size=4, length=400, warmup=20) >= 0.95


def test_write_report_gathers_runs(analysed, tmp_path):
    out, _, _ = analysed
    # A run directory around the single-head analysis, with a config and a training log.
    run = tmp_path / "single-seed1"
    (run / "analysis").mkdir(parents=True)
    (run / "analysis" / "analysis.json").write_text((out / "single" / "analysis.json").read_text())
    (run / "config.json").write_text(json.dumps({"curriculum": "single", "seed": 1, "task": "parity"}))
    (run / "metrics.csv").write_text("epoch,N_low,N_high,N_reached,loss\n1,2,2,,0.7\n2,3,3,2,0.5\n3,4,4,3,0.4\n")
    # A curriculum the study did not run gets its own rows, with '-' for the study.
    sliding = tmp_path / "sliding-seed2"
    (sliding / "analysis").mkdir(parents=True)
    (sliding / "analysis" / "analysis.json").write_text((out / "single" / "analysis.json").read_text())
    (sliding / "config.json").write_text(json.dumps({"curriculum": "sliding", "seed": 2, "task": "parity"}))
    path = write_report([out / "multi", run, sliding], tmp_path / "report.md")
    text = path.read_text()
    for expected in ("| multi |", "| single |", "0.71", "0.99", "0.96", "0.74", "N reached", "single-seed1"):
        assert expected in text, expected
    for title in ("## Curriculum: single-head (single)", "## Curriculum: multi-head (multi)",
                  "## Curriculum: sliding window (sliding)"):
        assert title in text, title
    ablation = text.split("## Ablation")[1].split("## Perturbation")[0]
    perturbation = text.split("## Perturbation")[1].split("## Forgetting")[0]
    for section in (ablation, perturbation):
        rows = [line.split("|")[1].strip() for line in section.splitlines() if line.startswith("| ")]
        assert rows[1:] == ["single", "multi", "sliding"], rows   # one row per curriculum present
        assert section.count("- / -") >= 1                         # no study figures for sliding
    for line in text.splitlines():
        if line.startswith("!["):
            assert (tmp_path / line.split("](")[1].rstrip(")")).is_file(), line
    assert (tmp_path / "report_files" / "n_reached.png").is_file()


def test_fit_timescales_at_the_study_recording_length():
    """10 trials x 100,000 steps, as the study records: AR(1) timescales come back within 3%."""
    from timescale_kernels.analysis import fit_timescales
    rng = np.random.default_rng(1)
    a = np.array([0.3, 0.5, 0.7, 0.9, 0.95])
    x = np.zeros((10, 100_000, a.size))
    noise = rng.standard_normal(x.shape)
    x[:, 0] = noise[:, 0]
    for t in range(1, x.shape[1]):
        x[:, t] = a * x[:, t - 1] + noise[:, t]
    tau = fit_timescales(x, max_lag=30)
    np.testing.assert_allclose(tau, -1.0 / np.log(a), rtol=0.03)


def test_the_study_settings_are_the_studys():
    """LevinaLab/rnn_timescale_public: 20 neurons ablated from each end (compute_ablate_tau.py); tau
    perturbed at 0 and 13 strengths from 0.001 to 10, the weights at 0 and 10 from 0.01 to 10."""
    import inspect
    from timescale_kernels.analysis import STUDY_EPS, STUDY_EPS_TAU
    assert inspect.signature(analyze_run).parameters["study_ablate_k"].default == 20
    assert len(STUDY_EPS_TAU) == 14 and STUDY_EPS_TAU[0] == 0 and STUDY_EPS_TAU[1] == pytest.approx(1e-3)
    assert STUDY_EPS_TAU[-1] == pytest.approx(10) and any(abs(e - 0.0464) < 1e-4 for e in STUDY_EPS_TAU)
    assert len(STUDY_EPS) == 11 and any(abs(e - 0.215) < 1e-3 for e in STUDY_EPS)
