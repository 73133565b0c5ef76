"""Tests for p2pfl.models and p2pfl.learner: the model zoo's shapes, flat parameters, losses, evaluation."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from p2pfl.config import ConfigError, TrainConfig
from p2pfl.data import synthetic
from p2pfl.distill import balanced_cross_entropy, distill_loss, log_prior, outlier_loss, own_split_distill_loss
from p2pfl.learner import Learner
from p2pfl.models import MODELS, UnknownModelError, build_model, param_count


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: threads only add overhead (and another test run may share the CPU)


# ----------------------------------------------------------------------------------------- models

@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("length", [40, 37])  # 37: not a multiple of the GRU chunk or the patch size
def test_every_arch_builds_and_has_the_shared_shape(arch, length):
    torch.manual_seed(0)
    model = build_model(arch, input_length=length, num_classes=5, embed_dim=12)
    assert param_count(model) > 0
    x = torch.randn(3, length)
    out = model(x)
    assert out.shape == (3, 5)
    assert torch.isfinite(out).all()
    assert model.embed(x).shape == (3, 12)
    assert model.embed_dim == 12
    assert model.head(model.embed(x)).shape == (3, 5)
    assert model(x.unsqueeze(1)).shape == (3, 5)  # (B, 1, L) is accepted as well as (B, L)


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("shape", [(13, 32), (28, 28)])  # MFCC coefficients x frames; an image's rows
def test_every_arch_reads_two_dimensional_inputs(arch, shape):
    torch.manual_seed(0)
    model = build_model(arch, input_length=shape[1], in_channels=shape[0], num_classes=10, embed_dim=12)
    x = torch.randn(4, *shape)
    assert model(x).shape == (4, 10) and model.embed(x).shape == (4, 12)
    # each input row matters: changing one row's values changes the output
    y = x.clone()
    y[:, -1] += 1.0
    assert not torch.allclose(model(x), model(y))


def test_unknown_arch_lists_the_choices():
    with pytest.raises(UnknownModelError, match="resnet") as e:
        build_model("resnet", input_length=40, num_classes=10)
    for name in MODELS:
        assert name in str(e.value)


def test_bad_arch_option_names_the_arch():
    with pytest.raises(UnknownModelError, match="mlp"):
        build_model("mlp", input_length=40, num_classes=10, depth=3)


# ---------------------------------------------------------------------------------------- losses

def test_balanced_cross_entropy_is_finite_with_an_unseen_class():
    counts = torch.tensor([10, 0, 5])
    log_p = log_prior(counts)
    assert torch.isfinite(log_p).all() and log_p[1] < -10
    logits = torch.randn(6, 3, requires_grad=True)
    loss = balanced_cross_entropy(logits, torch.tensor([0, 0, 2, 2, 0, 2]), log_p)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[:, 1].abs().max() < 1e-4  # the unseen class is left to distillation
    assert torch.isfinite(log_prior(torch.zeros(3, dtype=torch.long))).all()  # no data at all


def test_distill_loss_is_zero_for_a_matching_teacher():
    z = torch.randn(4, 3)
    assert distill_loss(z, torch.softmax(z, -1)).abs() < 1e-6
    assert distill_loss(z, torch.softmax(-z, -1)) > 0.1
    assert distill_loss(z, torch.softmax(z, -1), temperature=2.0).abs() < 1e-5


# --------------------------------------------------------------------------------------- learner

def _learner(arch="mlp", n=400, seed=0, **train):
    d = synthetic(num_samples=n, seed=seed)
    torch.manual_seed(seed)
    model = build_model(arch, input_length=d.input_shape[-1], num_classes=d.num_classes, embed_dim=16)
    config = TrainConfig(**({"batch_size": 32} | train))
    return Learner(model, d.x_train, d.y_train, num_classes=d.num_classes, config=config, total_steps=100,
                   seed=seed), d


def test_flat_parameters_round_trip():
    a, _ = _learner(seed=0)
    b, _ = _learner(seed=1)
    flat = a.get_flat()
    assert flat.shape == (param_count(a.model),) and flat.dtype == np.float32
    assert not np.array_equal(flat, b.get_flat())
    b.set_flat(flat)
    np.testing.assert_array_equal(b.get_flat(), flat)
    x = torch.randn(5, 40)
    torch.testing.assert_close(a.model(x), b.model(x))
    flat[:] = 0.0  # get_flat returns a copy: editing it leaves the model alone
    assert np.abs(a.get_flat()).sum() > 0


class _Fixed(nn.Module):
    """Its input is its logits: lets a test choose every prediction by hand."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # Adam needs something to hold

    def forward(self, x):
        return x + 0 * self.unused


def test_personal_accuracy_is_recall_weighted_by_the_label_mix():
    # the node trained on 60 samples of class 0, 40 of class 1, none of class 2
    y_train = np.array([0] * 60 + [1] * 40)
    learner = Learner(_Fixed(), np.zeros((100, 3), np.float32), y_train, num_classes=3, config=TrainConfig(),
                      total_steps=1, seed=0)
    # with the prior (log .6, log .4, -12) added, row 2's raw vote for class 1 turns into class 0
    x_test = np.array([
        [2.0, 0.0, 0.0],  # y=0: right either way
        [1.0, 0.0, 3.0],  # y=0: raw says 2, personal says 0 (class 2 is impossible for this node)
        [0.0, 0.1, -5.0],  # y=0: raw says 1, personal says 0
        [0.0, 3.0, 0.0],  # y=0: wrong either way
        [0.0, 2.0, 0.0],  # y=1: right either way
        [0.0, 0.2, 0.0],  # y=1: raw right, personal says 0
        [0.0, 0.0, 1.0],  # y=2: raw right; personal can't be (weight 0 anyway)
    ], np.float32)
    y_test = np.array([0, 0, 0, 0, 1, 1, 2])
    ev = learner.evaluate(x_test, y_test)
    # raw: class 0 gets rows 0 right (1/4), class 1 rows 4, 5 (2/2), class 2 row 6 (1/1)
    np.testing.assert_allclose(ev.per_class, [1 / 4, 1.0, 1.0])
    assert ev.global_acc == pytest.approx(4 / 7)
    # personal recall: class 0: rows 0, 1, 2 (3/4); class 1: row 4 (1/2); mix (0.6, 0.4, 0)
    assert ev.personal_acc == pytest.approx(0.6 * 3 / 4 + 0.4 * 1 / 2)
    expected_loss = float(nn.functional.cross_entropy(torch.from_numpy(x_test), torch.from_numpy(y_test)))
    assert ev.loss == pytest.approx(expected_loss, rel=1e-6)


@pytest.mark.parametrize("arch", ["mlp", "cnn1d"])
def test_training_lowers_the_loss(arch):
    learner, d = _learner(arch, lr=3e-3)
    before = learner.evaluate(d.x_test, d.y_test)
    first = learner.train(5)
    learner.train(40)
    last = learner.train(5)
    after = learner.evaluate(d.x_test, d.y_test)
    assert math.isfinite(first) and last < first
    assert after.loss < before.loss
    assert after.global_acc > before.global_acc and after.global_acc > 0.5  # 4 classes: chance is 0.25
    assert learner.step == 50


def test_training_on_a_teacher_moves_predictions_towards_it():
    # labels say nothing about class 3 at this node; a teacher that says "class 3" on reference rows does
    d = synthetic(num_samples=400, seed=0)
    keep = d.y_train != 3
    torch.manual_seed(0)
    model = build_model("mlp", input_length=40, num_classes=4, embed_dim=16)
    learner = Learner(model, d.x_train[keep], d.y_train[keep], num_classes=4, config=TrainConfig(batch_size=32),
                      total_steps=60, seed=0)
    ref = torch.from_numpy(d.x_test[d.y_test == 3])
    target = torch.tensor([[0.0, 0.0, 0.0, 1.0]]).repeat(len(ref), 1)
    before = learner.logits(ref).argmax(1)
    learner.train(60, ref, target)
    after = learner.logits(ref).argmax(1)
    assert (after == 3).mean() > 0.9 > (before == 3).mean()


class _Recorder(nn.Module):
    """A linear model that keeps every batch it is shown."""

    def __init__(self, length: int, classes: int):
        super().__init__()
        self.linear = nn.Linear(length, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.linear(x)


@pytest.mark.parametrize("shift", [0, 3])
def test_reference_rows_are_shifted_only_when_asked(shift):
    x = np.zeros((20, 40), np.float32)
    ramps = torch.arange(40, dtype=torch.float32).repeat(8, 1) * 100 + torch.arange(8)[:, None]  # distinct rows
    model = _Recorder(40, 4)
    learner = Learner(model, x, np.zeros(20, np.int64), num_classes=4, seed=0, total_steps=5,
                      config=TrainConfig(batch_size=4, kd_batch_size=8, augment_shift=0, augment_reference=shift))
    learner.train(5, ramps, torch.full((8, 4), 0.25))
    kd_rows = torch.cat([batch[4:] for batch in model.seen])  # after the 4 labelled rows of each step
    row = kd_rows[:, 20].long() % 100  # which ramp: the middle is never clamped
    offset = (kd_rows[:, 20] - ramps[row, 20]) / 100
    assert offset.abs().max() <= shift
    assert (offset != 0).any() == (shift > 0)  # 40 draws of 7 shifts: some move unless shifting is off
    for r, o, got in zip(row, offset.long(), kd_rows):
        torch.testing.assert_close(got[5:35], ramps[r, 5 + o:35 + o])


def test_shift_augment_moves_each_signal_by_at_most_max_shift():
    from p2pfl.learner import shift_augment
    x = torch.arange(3 * 10, dtype=torch.float32).view(3, 10)  # rows are ramps, so a shift is visible
    out = shift_augment(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for row, orig in zip(out, x):
        offset = int(row[5] - orig[5])  # the middle is never clamped
        assert -2 <= offset <= 2
        torch.testing.assert_close(row[2:8], orig[2 + offset:8 + offset])
    torch.testing.assert_close(shift_augment(x, 0, torch.Generator()), x)


def test_outlier_loss_pushes_only_the_pool_of_known_classes():
    """Pooled outlier exposure: inside the known classes the gradient is proportional to the student's own
    split (their ranking is not pushed at), outside it pulls each unknown class toward 1/C."""
    torch.manual_seed(0)
    z = torch.randn(6, 10, requires_grad=True)
    known = torch.zeros(10, dtype=torch.bool)
    known[[2, 5]] = True
    outlier_loss(z, known).backward()
    q = z.softmax(-1).detach()
    grad = z.grad * len(z)
    pool = q[:, known].sum(1, keepdim=True)
    assert torch.allclose(grad[:, known], q[:, known] * (1 - 0.2 / pool), atol=1e-6)
    assert torch.allclose(grad[:, ~known], q[:, ~known] - 0.1, atol=1e-6)
    # ratios inside the pool are free: any split with pool mass 2/10 and 1/10 elsewhere costs nothing
    at_target = torch.zeros(1, 10)
    at_target[0, 2], at_target[0, 5] = math.log(1.7), math.log(0.3)
    assert float(outlier_loss(at_target, known)) == pytest.approx(0.0, abs=1e-6)
    assert float(outlier_loss(torch.randn(3, 10), torch.ones(10, dtype=torch.bool))) == 0.0  # nothing unknown
    assert float(outlier_loss(torch.zeros(3, 10), torch.zeros(10, dtype=torch.bool))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_own_split_distillation_is_the_chain_rule_of_plain_distillation(temperature):
    """KL(t || s) = coarse KL + t(mine) x KL of the split among mine: the loss is linear in own_split,
    and at 1 it is plain distillation (by the formula, not only by the shortcut)."""
    torch.manual_seed(0)
    z, t = torch.randn(7, 10), torch.randn(7, 10).softmax(-1)
    known = torch.zeros(10, dtype=torch.bool)
    known[[1, 4, 8]] = True
    at = {w: float(own_split_distill_loss(z, t, known, w, temperature)) for w in (0.0, 0.5)}
    assert 2 * at[0.5] - at[0.0] == pytest.approx(float(distill_loss(z, t, temperature)), rel=1e-5)
    assert float(own_split_distill_loss(z, t, known, 1.0, temperature)) == float(distill_loss(z, t, temperature))
    none_known = torch.zeros(10, dtype=torch.bool)
    assert float(own_split_distill_loss(z, t, none_known, 0.0)) == float(distill_loss(z, t))  # nothing to split


def test_own_split_zero_leaves_the_ranking_among_own_classes_to_the_labels():
    """At own_split 0 the gradient inside the node's own classes is proportional to the student's own
    split (it moves the pool's mass, not the ranking inside it); outside, it is plain distillation's."""
    torch.manual_seed(0)
    z, t = torch.randn(5, 10, requires_grad=True), torch.randn(5, 10).softmax(-1)
    known = torch.zeros(10, dtype=torch.bool)
    known[[0, 3]] = True
    own_split_distill_loss(z, t, known, 0.0).backward()
    q = z.softmax(-1).detach()
    grad = z.grad * len(z)
    pool_q, pool_t = q[:, known].sum(1, keepdim=True), t[:, known].sum(1, keepdim=True)
    assert torch.allclose(grad[:, known], q[:, known] * (1 - pool_t / pool_q), atol=1e-6)
    assert torch.allclose(grad[:, ~known], q[:, ~known] - t[:, ~known], atol=1e-6)
    with pytest.raises(ConfigError, match="train.kd_own_split"):
        TrainConfig(kd_own_split=1.5)


def test_pooled_exposure_keeps_a_minority_class_that_uniform_targets_flatten():
    """A node with a majority and a minority class, exposed to reference rows of its own classes: uniform
    targets pull the minority's rows toward chance, pooled exposure leaves the labels' ranking."""
    d = synthetic(num_samples=800, seed=0)
    x, y = d.x_train, d.y_train
    keep = (y == 0) | ((y == 1) & (np.arange(len(y)) % 4 == 0))  # class 1 a minority
    ref = torch.from_numpy(d.x_test[(d.y_test == 0) | (d.y_test == 1)])
    margins = {}
    for pooled in (True, False):
        torch.manual_seed(0)
        model = build_model("mlp", input_length=40, num_classes=4, embed_dim=16)
        learner = Learner(model, x[keep], y[keep], num_classes=4, config=TrainConfig(batch_size=32, kd_weight=2.0),
                          total_steps=200, seed=0)
        learner.train(200, ref, None if pooled else torch.full((len(ref), 4), 0.25), outliers=pooled)
        z = torch.as_tensor(learner.logits(d.x_test[d.y_test == 1]))
        margins[pooled] = float((z[:, 1] - z[:, 0]).mean())  # minority over majority on minority rows
    assert margins[True] > margins[False] + 0.5, margins


# ----------------------------------------------------------------------------------------- device

def test_train_device_names_the_key_and_the_choices():
    with pytest.raises(ConfigError, match=r"train.device = 'gpu'.*'cuda'.*'auto'"):
        TrainConfig(device="gpu")
    assert TrainConfig(device="cuda:1").device == "cuda:1"


def test_privacy_on_a_gpu_is_refused_with_the_fix():
    from p2pfl import shipped
    from p2pfl.config import load_scenario

    with pytest.raises(ConfigError, match=r"train.device = 'cpu'"):
        load_scenario(shipped.scenario("quickstart"), {"privacy.epsilon": 8, "train.device": "cuda"})
    # the steps DP-SGD's plan has no room for, and Ray's CPU-only shards
    for key, value in (("train.make_up", 1.0), ("train.idle_steps", 30)):
        with pytest.raises(ConfigError, match=rf"privacy.epsilon with {key} = {value}: .* set {key} = 0"):
            load_scenario(shipped.scenario("quickstart"), {"privacy.epsilon": 8, key: value})
    with pytest.raises(ConfigError, match=r"ray = 'local' with train.device = 'auto'.*set train.device = 'cpu'"):
        load_scenario(shipped.scenario("quickstart"), {"ray": "local", "train.device": "auto"})


def test_a_profile_cannot_put_private_training_on_a_gpu(tmp_path):
    """A profile's [train] is checked where the node's plan is made (the scenario's check sees only its own)."""
    from p2pfl import assemble, shipped
    from p2pfl.config import load_profile, load_scenario

    (tmp_path / "gpu.toml").write_text('arch = "mlp"\n[train]\ndevice = "cuda"\n')
    s = load_scenario(shipped.scenario("quickstart"), {"privacy.epsilon": 8})
    with pytest.raises(ConfigError, match=r"profile gpu \[train\] device = 'cuda'.*set profile gpu \[train\] device"):
        assemble.node_plan(s, 0, "n0", load_profile(tmp_path / "gpu.toml"), np.arange(4), {})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a CUDA device")
def test_a_device_this_torch_cannot_use_is_a_config_error_and_auto_is_the_cpu():
    from p2pfl.learner import resolve_device

    with pytest.raises(ConfigError, match=r"train.device = 'cuda:0'.*0 CUDA device.*use 'cpu' or 'auto'"):
        resolve_device("cuda:0")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="train.device = 'cuda'"):
        _learner("mlp", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here: the GPU path is untested)")
def test_a_learner_on_cuda_trains_distills_and_evaluates_as_on_the_cpu():
    """Every Learner entry point a mode calls, on the GPU; the same seeds on both devices land close (kernels
    differ, so not bit-equal)."""
    on = {dev: _learner("cnn1d", device=dev) for dev in ("cpu", "cuda")}
    results = {}
    for dev, (learner, d) in on.items():
        teacher = torch.softmax(torch.randn(len(d.x_train), d.num_classes, generator=torch.Generator().manual_seed(0)), 1)
        learner.train(5, torch.as_tensor(d.x_train), teacher)
        learner.set_flat(learner.get_flat())
        results[dev] = (learner.evaluate(d.x_test, d.y_test), learner.logits(d.x_test[:8]), learner.class_means())
    (e_cpu, z_cpu, m_cpu), (e_gpu, z_gpu, m_gpu) = results["cpu"], results["cuda"]
    assert e_gpu.global_acc == pytest.approx(e_cpu.global_acc, abs=0.05)
    assert np.allclose(z_gpu, z_cpu, atol=1e-2) and np.allclose(m_gpu, m_cpu, atol=1e-2)
