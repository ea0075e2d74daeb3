"""D3PM: transition matrices, marginals and posteriors against brute force in float64; exact reverse chain; learning.

Oracle: for ONE categorical element with prior ``π``, the exact x0-posterior is Bayes' rule
``p(x_0 | x_t) ∝ π(x_0) [Q̄_t]_{x_0, x_t}``; plugged into the x0-parameterised reverse step (eq. 4) it gives the
exact reverse process, so the reverse chain started at the stationary law ends at ``π`` (exactly, when
``q(x_T | x_0)`` is the stationary law).
"""

from __future__ import annotations

import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from edifice.data import load
from edifice.generative import d3pm

F64 = torch.float64
MATS = {"uniform": d3pm.uniform_matrices, "absorbing": d3pm.absorbing_matrices, "gaussian": d3pm.gaussian_matrices}

betas_st = st.lists(st.floats(0.01, 1.0), min_size=1, max_size=6)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- matrices


@given(K=st.integers(2, 7), betas=betas_st, kind=st.sampled_from(sorted(MATS)))
def test_matrices_are_row_stochastic(K, betas, kind):
    q = MATS[kind](K, betas)
    kp = K + (kind == "absorbing")
    assert q.shape == (len(betas), kp, kp) and q.dtype == F64
    assert (q >= 0).all()
    torch.testing.assert_close(q.sum(-1), torch.ones(len(betas), kp, dtype=F64), rtol=0, atol=1e-12)


@given(K=st.integers(2, 6), betas=betas_st, kind=st.sampled_from(sorted(MATS)))
def test_cumulative_is_the_product_of_one_step_matrices(K, betas, kind):
    q = MATS[kind](K, betas)
    qbar = d3pm.cumulative_matrices(kind, K, betas)
    prod = torch.eye(q.shape[-1], dtype=F64)
    torch.testing.assert_close(qbar[0], prod)
    for t in range(1, len(betas) + 1):
        prod = prod @ q[t - 1]
        torch.testing.assert_close(qbar[t], prod, rtol=0, atol=1e-12)


@given(K=st.integers(2, 5), beta=st.floats(0.01, 0.99), T=st.integers(1, 5), kind=st.sampled_from(sorted(MATS)))
def test_q_xt_given_x0_is_a_matrix_power_row(K, beta, T, kind):
    sch = d3pm.make_schedule(kind, K, T, betas=[beta] * T)
    x0 = torch.arange(K).repeat(T + 1, 1).T.contiguous()  # (K, T+1): every start state at every step
    for t in range(T + 1):
        probs = d3pm.q_xt_given_x0(x0[:, t], t, sch)
        power = torch.linalg.matrix_power(sch.matrices[0], t)
        torch.testing.assert_close(probs, power[:K], rtol=0, atol=1e-12)


def test_gaussian_matrix_matches_the_formula_of_appendix_a():
    K, beta = 4, 0.3
    q = d3pm.gaussian_matrices(K, [beta])[0]
    z = sum(torch.exp(torch.tensor(-4.0 * n**2 / ((K - 1) ** 2 * beta), dtype=F64)) for n in range(-(K - 1), K))
    for i in range(K):
        for j in range(K):
            if i != j:
                want = torch.exp(torch.tensor(-4.0 * (i - j) ** 2 / ((K - 1) ** 2 * beta), dtype=F64)) / z
                torch.testing.assert_close(q[i, j], want)
    torch.testing.assert_close(q, q.T)  # symmetric -> doubly stochastic -> uniform stationary law


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_default_schedules_end_at_the_stationary_law(kind):
    sch = d3pm.make_schedule(kind, 3, 50)
    last = sch.cumulative[-1]
    want = torch.full((3, 3), 1 / 3, dtype=F64) if kind == "uniform" else torch.eye(4, dtype=F64)[[3, 3, 3, 3]]
    torch.testing.assert_close(last, want, rtol=0, atol=1e-12)
    if kind == "absorbing":  # masked with probability t / T
        torch.testing.assert_close(sch.cumulative[:, 0, 3], torch.arange(51, dtype=F64) / 50)


@given(K=st.integers(1, 5), betas=betas_st)
def test_absorbing_state_stays_absorbed(K, betas):
    q = d3pm.absorbing_matrices(K, betas)
    torch.testing.assert_close(q[:, K], torch.eye(K + 1, dtype=F64)[K].expand(len(betas), K + 1))
    sch = d3pm.make_schedule("absorbing", max(K, 2), len(betas), betas=betas)
    x = torch.full((3,), sch.num_states - 1)
    assert (d3pm.q_sample(x, len(betas), sch, generator=gen()) == sch.num_states - 1).all()


# ----------------------------------------------------------------------------- posterior


def _brute_posterior(sch, x_t, p0, t):
    """``Σ_{x0} p0(x0) q(x_{t-1}=i, x_t | x0)`` normalised over i, with explicit loops."""
    kp = sch.num_states
    w = torch.zeros(kp, dtype=F64)
    for i in range(kp):
        for a in range(p0.shape[0]):
            w[i] += p0[a] * sch.cumulative[t - 1][a, i] * sch.matrices[t - 1][i, x_t]
    return w / w.sum()


@given(K=st.integers(2, 4), kind=st.sampled_from(sorted(MATS)), T=st.integers(1, 4), data=st.data())
def test_posterior_is_bayes_rule_and_sums_to_one(K, kind, T, data):
    betas = data.draw(st.lists(st.floats(0.05, 1.0), min_size=T, max_size=T))
    sch = d3pm.make_schedule(kind, K, T, betas=betas)
    t = data.draw(st.integers(1, T))
    x0 = data.draw(st.integers(0, K - 1))
    # x_t drawn among states reachable from x0 (Bayes' rule needs q(x_t | x0) > 0)
    reach = [j for j in range(sch.num_states) if sch.cumulative[t][x0, j] > 1e-12]
    x_t = data.draw(st.sampled_from(reach))
    got = d3pm.posterior(torch.tensor([x_t]), torch.tensor([x0]), torch.tensor([t]), sch)[0]
    want = _brute_posterior(sch, x_t, torch.eye(K, dtype=F64)[x0], t)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.sum(), torch.tensor(1.0, dtype=F64))
    # eq. 4: the x0-distribution form (a full-support p0) against brute force too
    p0 = torch.tensor(data.draw(st.lists(st.floats(0.05, 1.0), min_size=K, max_size=K)), dtype=F64)
    p0 = p0 / p0.sum()
    got = d3pm.posterior(torch.tensor([x_t]), p0[None], torch.tensor([t]), sch)[0]
    torch.testing.assert_close(got, _brute_posterior(sch, x_t, p0, t), rtol=1e-9, atol=1e-12)


@given(T=st.integers(2, 20), data=st.data())
def test_absorbing_posterior_closed_form(T, data):
    """Masked diffusion: from the mask, unmask to x0 with prob (ᾱ_{t-1} - ᾱ_t)/(1 - ᾱ_t); unmasked stays."""
    K = 3
    sch = d3pm.make_schedule("absorbing", K, T)
    t = data.draw(st.integers(1, T))
    x0 = data.draw(st.integers(0, K - 1))
    ab = 1.0 - torch.arange(T + 1, dtype=F64) / T  # default schedule: masked with prob t / T
    got = d3pm.posterior(torch.tensor([K]), torch.tensor([x0]), t, sch)[0]
    want = torch.zeros(K + 1, dtype=F64)
    want[x0] = (ab[t - 1] - ab[t]) / (1 - ab[t])
    want[K] = (1 - ab[t - 1]) / (1 - ab[t])
    torch.testing.assert_close(got, want)
    t = min(t, T - 1)  # an unmasked x_t is impossible at t = T (β_T = 1 masks everything)
    got = d3pm.posterior(torch.tensor([x0]), torch.tensor([x0]), t, sch)[0]
    torch.testing.assert_close(got, torch.eye(K + 1, dtype=F64)[x0])
    # the model's step (eq. 4) keeps unmasked elements whatever it predicts
    p0 = torch.tensor([[0.2, 0.5, 0.3]], dtype=F64)
    torch.testing.assert_close(d3pm.posterior(torch.tensor([x0]), p0, t, sch)[0], torch.eye(K + 1, dtype=F64)[x0])


# ----------------------------------------------------------------------------- exact reverse chain / sampler


PI = torch.tensor([0.6, 0.1, 0.3], dtype=F64)


def prior_net(x_t, t, **cond):
    """Predict the data prior PI everywhere: under eq. 4 this is the EXACT reverse step for one element, since
    Σ_{x0} PI(x0) q(x_{t-1}, x_t | x0) = q(x_{t-1}, x_t) (normalising over x_{t-1} gives q(x_{t-1} | x_t))."""
    return PI.log().expand(x_t.shape + (3,))


def bayes_net(sch):
    """Bayes' x0-posterior p(x0 | x_t) ∝ PI(x0) Q̄_t[x0, x_t] (what the cross-entropy term fits)."""

    def net(x_t, t, **cond):
        w = PI * sch.cumulative[t.long()][:, :3, :].transpose(1, 2).gather(
            1, x_t[:, :, None].expand(-1, -1, 3))  # (B, 1, 3)
        return w.clamp_min(1e-300).log().to(torch.float64)

    return net


@pytest.mark.parametrize("kind", ["uniform", "absorbing", "gaussian"])
def test_exact_x0_posterior_reverse_chain_recovers_the_data_law(kind):
    sch = d3pm.make_schedule(kind, 3, 12)
    kp = sch.num_states
    law = torch.zeros(kp, dtype=F64)
    if kind == "absorbing":
        law[-1] = 1.0
    else:
        law[:3] = 1 / 3
    # absorbing: q(mask | x0) does not depend on x0, so Bayes' posterior is exact under eq. 4 too
    net = prior_net if kind != "absorbing" else bayes_net(sch)
    for t in range(12, 0, -1):  # law of x_{t-1} = Σ_{x_t} law(x_t) p(x_{t-1} | x_t)
        states = torch.arange(kp)[:, None]
        logits = net(states, torch.full((kp,), t))
        step = d3pm.posterior(states, torch.softmax(logits, -1), t, sch)[:, 0]  # (K', K')
        law = law @ step
    if kind == "gaussian":  # linear betas end at 1 but q(x_T | x0) is not exactly uniform: close, not exact
        assert (law[:3] - PI).abs().sum() < 0.05
    else:
        torch.testing.assert_close(law[:3], PI, rtol=0, atol=1e-10)
        assert law[3:].sum() < 1e-12


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_sampler_with_exact_posterior_draws_the_data_law(kind):
    sch = d3pm.make_schedule(kind, 3, 8)
    calls = []
    x = d3pm.sample(prior_net, (6000, 1), schedule=sch, generator=gen(1), dtype=F64,
                    callback=lambda d: calls.append(int(d["t"][0])))
    assert calls == list(range(8, 0, -1))
    freq = torch.stack([(x == v).double().mean() for v in (-1.0, 0.0, 1.0)])
    assert (freq - PI).abs().sum() < 0.05  # total variation ≈ 0.01 expected at n = 6000


def test_sampler_determinism_and_model_space():
    torch.manual_seed(0)
    net = d3pm.build(data_shape=(1, 8, 8), base_channels=8, T=4, transition="gaussian", categories=4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a, b, c = (d3pm.sample(net, (3, 1, 8, 8), generator=gen(s)) for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    levels = set(d3pm.to_model_space(torch.arange(4), 4).tolist())
    assert a.dtype == torch.float32 and set(a.unique().tolist()) <= levels


# ----------------------------------------------------------------------------- loss


def test_states_round_trip_and_binarisation():
    x = torch.tensor([-1.0, -0.2, 0.0, 1e-6, 0.7, 1.0])
    assert d3pm.to_states(x, 2).tolist() == (x > 0).long().tolist()
    s = torch.arange(5)
    assert torch.equal(d3pm.to_states(d3pm.to_model_space(s, 5), 5), s)


def test_loss_vanishes_for_a_perfect_denoiser_of_a_point_mass():
    """Data = one fixed image: logits +inf on it make every KL term and the cross-entropy 0."""
    x0 = torch.tensor([[0, 1, 2, 1]]).repeat(8, 1)
    for kind in ("uniform", "absorbing", "gaussian"):
        sch = d3pm.make_schedule(kind, 3, 10)
        net = lambda x_t, t: 60.0 * torch.nn.functional.one_hot(x0[: len(x_t)], 3).double()  # noqa: E731
        value, logs = d3pm.loss(net, x0, schedule=sch, generator=gen())
        assert abs(float(value)) < 1e-12 and float(logs["ce"]) < 1e-12
        for t in (1, 5, 10):
            assert abs(float(d3pm.loss(net, x0, schedule=sch, t=t)[0])) < 1e-12


def test_loss_terms_match_their_definitions():
    torch.manual_seed(0)
    net = d3pm.build(data_shape=(3,), categories=3, T=5, transition="uniform", hidden=16, depth=1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x0 = torch.tensor([[0, 2, 1], [1, 1, 0]])
    for t in (1, 3):
        value, logs = d3pm.loss(net, x0, t=t, hybrid_lambda=0.5, generator=gen(3))
        torch.testing.assert_close(value, logs["vb"] + 0.5 * logs["ce"])
        assert float(logs["vb"]) >= 0 and float(logs["ce"]) > 0
    # gradient reaches the network; λ = 0 is the pure bound
    value, logs = d3pm.loss(net, x0.float() - 1.0, hybrid_lambda=0.0, generator=gen())
    value.backward()
    assert all(p.grad is not None for p in net.parameters())
    torch.testing.assert_close(value.detach(), logs["vb"])


def test_nll_bound_is_at_least_the_data_entropy_and_is_zero_for_a_point_mass_oracle():
    x0 = torch.tensor([[0, 1, 2, 1]]).repeat(4, 1)
    sch = d3pm.make_schedule("absorbing", 3, 6)
    perfect = lambda x_t, t: 60.0 * torch.nn.functional.one_hot(x0[: len(x_t)], 3).double()  # noqa: E731
    assert d3pm.nll_bound(perfect, x0, schedule=sch, generator=gen()).abs().max() < 1e-9
    # a uniform p̃ pays log 3 per element when it unmasks it: E[bound] = Σ_t P(masked at t) (1/t) log 3 = 4 log 3
    blind = lambda x_t, t: torch.zeros(x_t.shape + (3,), dtype=F64)  # noqa: E731
    bound = d3pm.nll_bound(blind, x0.repeat(1000, 1), schedule=sch, generator=gen())
    assert abs(float(bound.mean()) - 4 * torch.log(torch.tensor(3.0)).item()) < 0.1


def test_build_records_config_and_rebuilds():
    net = d3pm.build(data_shape=(2,), categories=4, transition="absorbing", T=7, hidden=8, depth=1, num_classes=3)
    assert net.config["T"] == 7 and net.config["transition"] == "absorbing"
    other = d3pm.build(**{**net.config, "data_shape": tuple(net.config["data_shape"]),
                          "channel_mults": tuple(net.config["channel_mults"])})
    other.load_state_dict(net.state_dict())
    x = torch.tensor([[0, 4], [3, 1]])
    assert net(x, torch.tensor([1.0, 7.0]), y=torch.tensor([0, 2])).shape == (2, 2, 4)
    assert torch.equal(net(x, torch.tensor([2.0, 3.0])), other(x, torch.tensor([2.0, 3.0])))


# ----------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    sch = d3pm.make_schedule("uniform", 3, 4)
    with pytest.raises(ValueError, match="data_shape"):
        d3pm.build(data_shape=(0,))
    with pytest.raises(ValueError, match="data_shape"):
        d3pm.build(data_shape=(2, 3))
    with pytest.raises(ValueError, match="data_shape"):
        d3pm.build(data_shape=(1, 4, 8))
    with pytest.raises(ValueError, match="categories must be an int >= 2, got 1"):
        d3pm.build(data_shape=(2,), categories=1)
    with pytest.raises(ValueError, match="transition must be one of"):
        d3pm.build(data_shape=(2,), transition="bert")
    with pytest.raises(ValueError, match="T must be a positive int, got 0"):
        d3pm.build(data_shape=(2,), T=0)
    with pytest.raises(ValueError, match="betas must have T = 3 values, got 2"):
        d3pm.build(data_shape=(2,), T=3, betas=[0.1, 0.2])
    with pytest.raises(ValueError, match="hidden"):
        d3pm.build(data_shape=(2,), hidden=0)
    with pytest.raises(ValueError, match=r"betas must lie in \[0, 1\]"):
        d3pm.uniform_matrices(3, [0.5, 1.5])
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\]"):
        d3pm.gaussian_matrices(3, [0.0])
    with pytest.raises(TypeError, match="betas must be a 1-D tensor or a sequence"):
        d3pm.uniform_matrices(3, 0.5)
    with pytest.raises(ValueError, match="betas must be non-empty"):
        d3pm.absorbing_matrices(3, [])
    with pytest.raises(ValueError, match="K must be an int >= 2"):
        d3pm.gaussian_matrices(1, [0.5])
    with pytest.raises(ValueError, match=r"t must be in \[1, 4\], got values in \[0, 0\]"):
        d3pm.posterior(torch.tensor([0]), torch.tensor([1]), 0, sch)
    with pytest.raises(ValueError, match=r"x_t must hold states in \[0, 3\)"):
        d3pm.posterior(torch.tensor([3]), torch.tensor([1]), 1, sch)
    with pytest.raises(TypeError, match="x_t must be an integer tensor"):
        d3pm.posterior(torch.tensor([0.0]), torch.tensor([1]), 1, sch)
    with pytest.raises(ValueError, match="x0_probs must match x_t's shape"):
        d3pm.posterior(torch.tensor([0, 1]), torch.tensor([1]), 1, sch)
    with pytest.raises(ValueError, match=r"x0 probabilities must have shape \(B, \.\.\., 3\)"):
        d3pm.q_xt_given_x0(torch.ones(2, 5), 1, sch)
    with pytest.raises(TypeError, match="schedule must be a D3PMSchedule"):
        d3pm.q_xt_given_x0(torch.tensor([0]), 1, "uniform")
    net = d3pm.build(data_shape=(2,), hidden=8, depth=1, T=4)
    x = torch.tensor([[-1.0, 1.0], [1.0, 0.5]])
    with pytest.raises(ValueError, match="x must lie on the 2 levels"):
        d3pm.loss(net, x, quantize=False)
    with pytest.raises(ValueError, match=r"x must hold states in \[0, 2\)"):
        d3pm.loss(net, torch.tensor([[0, 2]]))
    with pytest.raises(ValueError, match="hybrid_lambda must be in"):
        d3pm.loss(net, x, hybrid_lambda=-1.0)
    with pytest.raises(TypeError, match="quantize must be a bool"):
        d3pm.loss(net, x, quantize=1)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        d3pm.loss(net, x, generator=0)
    with pytest.raises(TypeError, match="cond must be a mapping"):
        d3pm.loss(net, x, cond=[1])
    with pytest.raises(ValueError, match=r"t must be in \[1, 4\]"):
        d3pm.loss(net, x, t=5)
    with pytest.raises(ValueError, match=r"net must return x0 logits of shape \(2, 2, 3\)"):
        d3pm.loss(lambda x_t, t: x_t.double(), x, schedule=sch)
    with pytest.raises(TypeError, match="schedule must be given"):
        d3pm.loss(lambda x_t, t: x_t, x)
    with pytest.raises(ValueError, match="shape must be a non-empty tuple"):
        d3pm.sample(net, (0, 2))
    with pytest.raises(TypeError, match="net must be callable"):
        d3pm.sample(3, (1, 2), schedule=sch)
    with pytest.raises(TypeError, match="callback must be callable"):
        d3pm.sample(net, (1, 2), callback=5)
    with pytest.raises(ValueError, match=r"logits must have shape \(2, 3\)"):
        d3pm.reverse_step(torch.tensor([0, 1]), torch.zeros(2, 2), 1, sch)


# ----------------------------------------------------------------------------- learning


def nn_hamming(samples, reference):
    """Mean Hamming distance (pixels) from each binary sample to its nearest reference image."""
    s = (samples > 0).flatten(1).float()
    r = (reference > 0).flatten(1).float()
    return float(torch.cdist(s, r, p=1).min(dim=1).values.mean())


def test_learning_absorbing_d3pm_on_binarised_digits():
    """Metric: mean nearest-neighbour Hamming distance (of 64 pixels) from samples to the held-out digits.

    An untrained D3PM samples independent fair coins (far from every digit); a product of per-pixel
    Bernoullis with the data's marginals is the stronger baseline; training must beat both.
    """
    start = time.time()
    src = load("digits")
    test_x = src.test_set()[0]
    g = gen(0)
    torch.manual_seed(0)
    net = d3pm.build(data_shape=(64,), transition="absorbing", T=20, hidden=128, depth=2)
    before = d3pm.sample(net, (200, 64), generator=gen(1))
    untrained = nn_hamming(before, test_x)
    marginal = (test_x > 0).double().mean(0).flatten()
    indep = nn_hamming((torch.rand(200, 64, generator=gen(2), dtype=F64) < marginal).float(), test_x)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(300):
        x, _ = src.train_batch(64, generator=g)
        value, _ = d3pm.loss(net, x.flatten(1), generator=g)
        opt.zero_grad()
        value.backward()
        opt.step()
    samples = d3pm.sample(net, (200, 64), generator=gen(1))
    trained = nn_hamming(samples, test_x)
    print(f"NN Hamming: untrained {untrained:.2f}, independent pixels {indep:.2f}, trained {trained:.2f}; "
          f"{time.time() - start:.1f}s")
    assert untrained > 20 and trained < 0.5 * untrained
    assert trained < indep

    # "Classified as digits": a digit-vs-noise classifier (an MLP on the 64 bits) trained on real binarised digits
    # against images of independent pixels with the digits' own marginals (only pixel correlations tell those apart)
    # and fair coins. Measured: held-out digits 0.81 called digits, held-out noise 0.06, fair coins (the untrained
    # D3PM) 0.00, trained D3PM samples 0.78; the asserts leave margin.
    train_x, _ = src.train_batch(1200, generator=gen(5))
    real = (train_x.flatten(1) > 0).float()
    noise = lambda n, seed: (torch.rand(n, 64, generator=gen(seed)) < marginal.float()).float()  # noqa: E731
    coins = (torch.rand(600, 64, generator=gen(8)) < 0.5).float()  # and fair coins, an untrained model's output
    xs = torch.cat([real, noise(1200, 6), coins])
    ys = torch.cat([torch.ones(1200), torch.zeros(1800)])
    torch.manual_seed(0)
    clf = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    copt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(800):
        idx = torch.randint(0, xs.shape[0], (256,), generator=g)
        closs = torch.nn.functional.binary_cross_entropy_with_logits(clf(xs[idx]).squeeze(1), ys[idx])
        copt.zero_grad()
        closs.backward()
        copt.step()

    def digit_rate(b):
        with torch.no_grad():
            return float((clf((b.flatten(1) > 0).float()).squeeze(1) > 0).float().mean())

    rates = {"held-out digits": digit_rate(test_x), "held-out noise": digit_rate(noise(400, 7)),
             "trained": digit_rate(samples),
             "untrained": digit_rate(before)}
    print("classified as digits:", {k: round(v, 3) for k, v in rates.items()})
    assert rates["held-out digits"] > 0.7 and rates["held-out noise"] < 0.2  # the classifier itself works
    assert rates["trained"] > 0.6 and rates["trained"] > 3 * rates["held-out noise"]
    assert rates["untrained"] < 0.1
