"""Differential privacy: the noise is planned and the epsilon reported by opacus's accountant, DP-SGD
clips every private sample's gradient, and a private run says what it spent."""

import numpy as np
import pytest
import torch

from p2pfl.config import ConfigError, PrivacyConfig, load_scenario
from p2pfl.privacy import ALPHAS, PrivateSteps, epsilon_of, noisy_counts, plan_noise


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
    p, unused = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    big = torch.tensor([[300.0, 400.0, 0.0]] * 4 + [[1.0, 1.0, 1.0]] * 2)  # 4 private rows of norm 500, 2 public
    p.grad_sample = big.clone()
    state = steps.gen.get_state()
    steps.set_grads([p, unused], private_rows=4)
    replay = torch.Generator()
    replay.set_state(state)
    noise = torch.normal(0.0, steps.noise, size=(3,), generator=replay)
    clipped = torch.tensor([0.6, 0.8, 0.0]) * 4  # each private row scaled to norm 1
    torch.testing.assert_close(p.grad, (clipped + noise) / 10.0 + torch.tensor([2.0, 2.0, 2.0]))
    assert p.grad_sample is None and steps.spent == 1
    # a parameter the forward did not reach still gets noise (else its update would be noiseless)
    torch.testing.assert_close(unused.grad, torch.normal(0.0, steps.noise, size=(2,), generator=replay) / 10.0)


def test_the_noise_is_not_the_scenario_seeds():
    """Peers know the scenario and the node's index: noise drawn from them could be subtracted."""
    a = PrivateSteps(PrivacyConfig(epsilon=8.0), n=500, planned_steps=10)
    b = PrivateSteps(PrivacyConfig(epsilon=8.0), n=500, planned_steps=10)
    assert not torch.equal(a.sample(), b.sample()) or not torch.equal(a.sample(), b.sample())


def test_the_count_release_spends_a_tenth_of_the_target_by_default():
    for target in (1.0, 8.0):
        steps = PrivateSteps(PrivacyConfig(epsilon=target), n=500, planned_steps=100)
        assert 0.09 * target <= epsilon_of(steps.prefix, 1e-5) <= 0.1 * target
    assert PrivateSteps(PrivacyConfig(epsilon=8.0, count_noise=20.0), n=500, planned_steps=10).count_noise == 20.0


def _private_learner(arch, epsilon=8.0, batch=100, steps=3):
    from p2pfl.config import TrainConfig
    from p2pfl.learner import Learner
    from p2pfl.models import build_model
    from p2pfl.privacy import private_model

    torch.manual_seed(0)
    model = private_model(build_model(arch, input_length=16, num_classes=4, embed_dim=8))
    rng = np.random.default_rng(0)
    config = TrainConfig(local_steps=5, warmup_steps=0, augment_shift=0, augment_reference=0)
    return Learner(model, rng.normal(size=(60, 1, 16)).astype(np.float32), rng.integers(0, 4, 60), num_classes=4,
                   config=config, total_steps=steps, seed=0, privacy=PrivacyConfig(epsilon=epsilon, batch=batch))


@pytest.mark.parametrize("arch", ["mlp", "gru", "transformer"])
def test_private_steps_run_with_and_without_rows_drawn_and_stop_at_the_plan(arch, caplog):
    learner = _private_learner(arch, batch=1)  # about one private row a step: often none
    before = [p.detach().clone() for p in learner.model.parameters()]
    for _ in range(20):
        learner.private.spent = 0  # keep stepping privately, to hit draws of no row at all
        learner.train(1)
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.model.parameters()))
    learner.private.spent = learner.private.planned
    kept = [p.detach().clone() for p in learner.model.parameters()]
    learner.train(2)  # budget spent, no teacher: nothing to learn from, no private row touched
    assert all(torch.equal(a, b) for a, b in zip(kept, learner.model.parameters()))
    assert "privacy budget spent" in caplog.text
    x = torch.randn(30, 1, 16)
    learner.train(2, x, torch.full((30, 4), 0.25))  # past the plan it still distills (public rows)
    assert any(not torch.equal(a, b) for a, b in zip(kept, learner.model.parameters()))


def test_a_restarted_private_node_keeps_its_release_and_counts_a_round_again(tmp_path):
    from p2pfl import checkpoint

    learner = _private_learner("mlp", steps=40)
    learner.train(3)
    released = learner.label_counts.copy()
    checkpoint.save(tmp_path / "c.pt", learner, round=1, meta={"privacy": "x"}, peers={})
    again = _private_learner("mlp", steps=40)
    checkpoint.load(tmp_path / "c.pt", again, meta={"privacy": "x"})
    np.testing.assert_array_equal(again.label_counts, released)  # a new draw would be a second release
    assert again.private.spent == 3 + again.config.local_steps  # what may have left after the checkpoint
    assert again.epsilon_spent() > learner.epsilon_spent()


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
        accountant.history = [(private.count_noise, 1.0, 1), (private.noise, private.sample_rate, node.learner.step)]
        assert spent[node.node_id] == pytest.approx(accountant.get_epsilon(s.privacy.delta, alphas=ALPHAS), rel=1e-9)
        assert spent[node.node_id] <= 4.0  # the whole run was planned: the target is spent, not exceeded
        assert node.learner.step == node.learner.private.planned
        # what it claims is the noisy release, not its own counts
        assert not np.array_equal(node.learner.label_counts, np.bincount(node.learner.y, minlength=4))
        assert node.status()["epsilon"] == spent[node.node_id]


def test_privacy_steps_plans_the_budget_over_the_first_steps_only():
    from p2pfl.config import TrainConfig
    from p2pfl.learner import Learner
    from p2pfl.models import build_model
    from p2pfl.privacy import private_model

    rng = np.random.default_rng(0)
    learner = Learner(private_model(build_model("mlp", input_length=16, num_classes=4, embed_dim=8)),
                      rng.normal(size=(60, 1, 16)).astype(np.float32), rng.integers(0, 4, 60), num_classes=4,
                      config=TrainConfig(warmup_steps=0), total_steps=100, seed=0,
                      privacy=PrivacyConfig(epsilon=8.0, steps=4))
    fewer = learner.private.noise
    assert learner.private.planned == 4 and fewer < PrivateSteps(PrivacyConfig(epsilon=8.0), 60, 100).noise
    learner.train(6, torch.randn(20, 1, 16), torch.full((20, 4), 0.25))
    assert learner.private.spent == 4 and learner.epsilon_spent() <= 8.0
