"""Differential privacy: the noise is planned and the epsilon reported by opacus's accountant, DP-SGD
clips every private sample's gradient, and a private run says what it spent."""

import numpy as np
import pytest
import torch

from p2pfl.config import ConfigError, PrivacyConfig, load_scenario
from p2pfl.privacy import PrivateSteps, epsilon_of, noisy_counts, plan_noise


def test_the_planned_noise_spends_the_target_and_no_less_noise_would_do():
    prefix = [(5.0, 1.0, 1)]
    for target, rate, steps in [(8.0, 0.2, 1000), (1.0, 0.05, 300), (4.0, 1.0, 20)]:
        noise = plan_noise(target, 1e-5, rate, steps, prefix)
        assert epsilon_of(prefix + [(noise, rate, steps)], 1e-5) <= target
        assert epsilon_of(prefix + [(noise - 0.02, rate, steps)], 1e-5) > target
    with pytest.raises(ValueError, match="label-count release alone spends"):
        plan_noise(0.01, 1e-5, 0.2, 100, [(0.5, 1.0, 1)])


def test_noisy_counts_are_counts():
    c = noisy_counts(np.array([0, 3, 500]), 5.0, np.random.default_rng(0))
    assert c.dtype == np.int64 and (c >= 0).all() and abs(int(c[2]) - 500) < 40


def test_a_private_step_clips_each_sample_and_adds_the_planned_noise():
    steps = PrivateSteps(PrivacyConfig(epsilon=8.0, batch=10, clip=1.0), n=100, planned_steps=50)
    assert steps.sample_rate == 0.1 and steps.noise > 0.5
    p = torch.nn.Parameter(torch.zeros(3))
    big = torch.tensor([[300.0, 400.0, 0.0]] * 4 + [[1.0, 1.0, 1.0]] * 2)  # 4 private rows of norm 500, 2 public
    p.grad_sample = big.clone()
    gen = torch.Generator().manual_seed(0)
    steps.set_grads([p], private_rows=4, gen=gen)
    noise = torch.normal(0.0, steps.noise, size=(3,), generator=torch.Generator().manual_seed(0))
    clipped = torch.tensor([0.6, 0.8, 0.0]) * 4  # each private row scaled to norm 1
    torch.testing.assert_close(p.grad, (clipped + noise) / 10.0 + torch.tensor([2.0, 2.0, 2.0]))
    assert p.grad_sample is None


def test_privacy_settings_are_checked_by_key():
    for key, bad in [("privacy.epsilon", -1.0), ("privacy.delta", 2.0), ("privacy.clip", 0.0), ("privacy.batch", 0)]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_scenario(None, {key: bad})
    assert not PrivacyConfig().on and not PrivacyConfig(epsilon=float("inf")).on and PrivacyConfig(epsilon=2).on


def test_a_private_run_reports_the_accountants_epsilon_per_node(cache):
    """The epsilon a run prints is what the accountant says for the run's own noise, sampling rate and
    steps, computed here directly with opacus."""
    from opacus.accountants import RDPAccountant

    from p2pfl.sim import Simulation
    from tests.test_sim import TINY

    s = load_scenario(None, TINY | {"rounds": 2, "privacy.epsilon": 4.0, "profiles": ["mlp", "gru"]})
    result = Simulation(s, run_dir=None).run()
    spent = result.summary["epsilon_spent"]["per_node"]
    assert set(spent) == {n.node_id for n in result.nodes}
    for node in result.nodes:
        private = node.learner.private
        accountant = RDPAccountant()
        accountant.history = [(s.privacy.count_noise, 1.0, 1), (private.noise, private.sample_rate, node.learner.step)]
        assert spent[node.node_id] == pytest.approx(accountant.get_epsilon(s.privacy.delta), rel=1e-9)
        assert spent[node.node_id] <= 4.0  # the whole run was planned: the target is spent, not exceeded
        assert node.learner.step == node.learner.private.planned
        # what it claims is the noisy release, not its own counts
        assert not np.array_equal(node.learner.label_counts, np.bincount(node.learner.y, minlength=4))
        assert node.status()["epsilon"] == spent[node.node_id]
