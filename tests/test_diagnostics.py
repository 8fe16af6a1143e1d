"""bnutils.diagnostics against cases whose answer is known (notebook 07)."""

import math

import pytest
import torch
from torch import nn

from bnutils import diagnostics as dg
from bnutils.models import mlp, small_cnn


def test_dead_units_are_never_positive_over_batch_and_positions():
    h = -torch.rand(4, 3, 5, 5)  # (N, C, H, W), all negative
    h[2, 1, 4, 0] = 0.3  # one positive value anywhere keeps channel 1 alive
    h[:, 2] = 0.0  # exactly zero counts as dead (ReLU outputs 0)
    assert dg.dead_units(h).tolist() == [True, False, True]
    assert dg.dead_fraction(h) == pytest.approx(2 / 3)
    assert dg.dead_units(h[:, :, 0, 0]).tolist() == [True, True, True]  # (N, C)


def test_dead_fraction_per_network_of_a_stack():
    h = torch.randn(2, 50, 4)  # (k, N, C)
    h[0, :, :3] = -1.0  # net 0: three of four units dead
    h[1] = h[1].abs() + 0.1  # net 1: none
    assert dg.dead_units(h, reduce_dims=(1,)).shape == (2, 4)
    assert dg.dead_fraction(h, reduce_dims=(1,)).tolist() == [0.75, 0.0]


def test_a_relu_layer_with_a_large_negative_bias_is_all_dead():
    layer = nn.Linear(10, 6)
    with torch.no_grad():
        layer.bias.fill_(-100.0)
    assert dg.dead_fraction(torch.relu(layer(torch.randn(32, 10)))) == 1.0


def test_saturation_threshold_is_where_the_sigmoid_is_within_the_margin():
    edge = math.log(0.98 / 0.02)  # sigmoid(edge) = 0.98
    u = torch.tensor([0.0, edge - 1e-3, edge + 1e-3, -edge - 1e-3, 100.0])
    assert dg.saturation(u, "sigmoid") == pytest.approx(3 / 5)
    # tanh(u) = 2 sigmoid(2u) - 1: the same share at half the input
    assert dg.saturation(u / 2, "tanh") == pytest.approx(3 / 5)
    assert dg.saturation(u, "sigmoid", margin=1e-6) == pytest.approx(1 / 5)
    per_row = dg.saturation(torch.stack([u, torch.zeros(5)]), reduce_dims=(1,))
    assert per_row.tolist() == pytest.approx([0.6, 0.0])


def test_saturation_of_standard_normal_input_matches_the_gaussian_tail():
    u = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    edge = math.log(0.98 / 0.02)
    expected = math.erfc(edge / math.sqrt(2))  # P(|u| > edge)
    assert dg.saturation(u) == pytest.approx(expected, abs=2e-4)
    assert dg.saturation(10 * u) == pytest.approx(math.erfc(edge / 10 / math.sqrt(2)),
                                                  abs=3e-3)


def test_saturation_refuses_what_it_cannot_measure():
    with pytest.raises(ValueError, match="sigmoid"):
        dg.saturation(torch.zeros(3), "relu")
    with pytest.raises(ValueError, match="margin"):
        dg.saturation(torch.zeros(3), margin=0.5)


def test_update_ratio():
    w = torch.randn(5, 7)
    assert dg.update_ratio(w, 1.1 * w) == pytest.approx(0.1, rel=1e-5)
    assert dg.update_ratio(w, w) == 0.0
    stack = torch.stack([w, w])
    ratio = dg.update_ratio(stack, torch.stack([1.5 * w, 0.9 * w]), reduce_dims=(1, 2))
    assert ratio.tolist() == pytest.approx([0.5, 0.1], rel=1e-5)
    with pytest.raises(ValueError, match="shapes"):
        dg.update_ratio(w, w.T)


def test_record_inputs_sees_every_nonlinearity_in_order():
    net = mlp(hidden=(6, 5), activation="tanh")
    x = torch.randn(3, 784)
    with dg.record_inputs(net) as seen:
        net(x)
    assert [u.shape[1] for _, u in seen] == [6, 5]
    assert torch.allclose(seen[0][1], net[0](x))
    with dg.record_inputs(net) as later:
        pass
    net(x)  # hooks are gone after the block
    assert later == [] and len(seen) == 2


def test_layer_statistics_known_values_and_a_real_sgd_step():
    torch.manual_seed(0)
    net = mlp(hidden=(20, 20), activation="sigmoid", norm=nn.BatchNorm1d)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    stats = dg.layer_statistics(net, x, y, lr=0.5)
    assert all(len(v) == 2 for v in stats.values())
    # BN before the sigmoid: inputs ~ N(0, 1), so the output mean is near 1/2
    assert stats["act_mean"] == pytest.approx([0.5, 0.5], abs=0.02)
    assert stats["saturated"] == pytest.approx([0.0, 0.0], abs=0.01)
    assert stats["dead"] == [0.0, 0.0]
    for k, v in net.state_dict().items():  # running statistics untouched
        if k in buffers:
            assert torch.equal(v, buffers[k])
    # the update-to-data ratio is what one plain SGD step really does
    before = [net[0].weight.detach().clone(), net[3].weight.detach().clone()]
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    nn.functional.cross_entropy(net(x), y).backward()
    grad_std = [net[0].weight.grad.std().item(), net[3].weight.grad.std().item()]
    opt.step()
    ratios = [dg.update_ratio(before[0], net[0].weight), dg.update_ratio(before[1], net[3].weight)]
    assert stats["update_ratio"] == pytest.approx(ratios, rel=1e-4)
    assert stats["grad_std"] == pytest.approx(grad_std, rel=1e-4)
    assert stats["weight_norm"] == pytest.approx([b.norm().item() for b in before])


def test_layer_statistics_sees_saturation_and_dead_relus():
    torch.manual_seed(0)
    x, y = torch.randn(32, 784), torch.randint(0, 10, (32,))
    big = mlp(hidden=(30, 30), activation="sigmoid", init_std=20.0)  # huge pre-activations
    assert min(dg.layer_statistics(big, x, y)["saturated"]) > 0.9
    flat = mlp(hidden=(30,), activation="sigmoid", init_std=0.0)
    flat[0].weight.data.zero_()
    stats = dg.layer_statistics(flat, x, y)
    assert stats["act_mean"] == [0.5] and stats["act_std"] == [0.0]
    assert "update_ratio" not in stats
    cnn = small_cnn()
    with torch.no_grad():
        cnn[0].bias.fill_(-1e3)  # the first block's ReLUs never fire
    stats = dg.layer_statistics(cnn, torch.randn(4, 1, 28, 28), y[:4])
    assert stats["dead"][0] == 1.0 and stats["saturated"] == [0.0, 0.0, 0.0]
    assert stats["grad_std"][0] == 0.0  # no gradient reaches a dead layer's weights


def test_layer_statistics_needs_a_nonlinearity_per_layer():
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="one nonlinearity per hidden weight layer"):
        dg.layer_statistics(net, torch.randn(2, 4), torch.tensor([0, 1]))


def test_kept_buffers_probes_in_train_mode_and_leaves_no_trace():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = 5 + 3 * torch.randn(100, 3)
    with torch.no_grad(), dg.kept_buffers(net):
        assert net.training
        y = net(x)
    assert y.mean(0).abs().max() < 1e-5  # batch statistics were used
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
