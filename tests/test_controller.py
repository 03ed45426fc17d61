"""C (models/controller.py): parameter counts of the paper's controllers, action mappings, the flat layout CMA-ES
sees, the batched form against the per-member one, and loading from a controller artifact (ref §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodels_cli.config import ControllerConfig, preset
from worldmodels_cli.models.controller import Controller, build_controller, load_controller
from worldmodels_cli.runtime.errors import ArtifactError
from worldmodels_cli.store import artifacts as A


def _model_config(cfg: ControllerConfig, env: str, z: int, h: int, a: int) -> dict:
    # the shape evolve.controller_model_config writes
    return {"controller": cfg.to_dict(), "env": env, "z_dim": z, "hidden": h, "action_dim": a}


@pytest.mark.parametrize(
    ("cfg", "z", "h", "a", "env", "count"),
    [
        (ControllerConfig(features="zh", bias=True), 32, 256, 3, "carracing", 867),  # ref §5.1
        (ControllerConfig(features="zch", bias=False), 64, 512, 1, "doom", 1088),  # ref §5.2
        (ControllerConfig(features="z", bias=True), 32, 256, 3, "carracing", 99),  # V-only, linear
        (ControllerConfig(features="z", bias=True, hidden=40), 32, 256, 3, "carracing", 1443),  # V-only, hidden 40
    ],
)
def test_parameter_counts_match_the_paper(cfg, z, h, a, env, count):
    assert Controller(cfg, z, h, a, env).param_count == count


def test_paper_presets_build_the_paper_controllers():
    for env, count in (("carracing", 867), ("doom", 1088)):
        p = preset(env, "paper")
        c = Controller(p.controller, p.mdn.z_dim, p.mdn.hidden, p.mdn.action_dim, env)
        assert c.param_count == count


def test_flat_layout_is_bias_then_row_major_weights():
    c = Controller(ControllerConfig(features="zh", bias=True), 4, 5, 3, "carracing")
    flat = torch.arange(c.param_count, dtype=torch.float64)
    [(w, b)] = c.unflatten(flat)
    assert torch.equal(b, flat[:3])  # ref §5.1: params[0:3] = b
    assert w.shape == (9, 3)
    assert w[2, 1] == 3 + 2 * 3 + 1  # params[3:] = W.reshape(in, 3), row-major, rows [z, h]


def test_hidden_layer_layout_is_the_originals():
    c = Controller(ControllerConfig(features="z", bias=True, hidden=40), 32, 256, 3, "carracing")
    flat = torch.arange(c.param_count, dtype=torch.float64)
    (w1, b1), (w2, b2) = c.unflatten(flat)
    # model.py: [bias_hidden (40), weight_hidden (32, 40), bias_output (3), weight_output (40, 3)]
    assert b1[0] == 0 and w1[0, 0] == 40 and w1[31, 39] == 40 + 32 * 40 - 1
    assert b2[0] == 33 * 40 and w2[0, 0] == 33 * 40 + 3 and w2[39, 2] == c.param_count - 1


@pytest.mark.parametrize("cfg", [ControllerConfig(features="zch", bias=False), ControllerConfig(features="z", hidden=6)])
def test_flatten_round_trip(cfg):
    c = Controller(cfg, 4, 5, 2, "doom")
    flat = torch.randn(7, c.param_count, dtype=torch.float64)
    assert torch.equal(c.flatten(c.unflatten(flat)), flat)


def test_wrong_length_is_refused():
    c = Controller(ControllerConfig(), 4, 5, 3, "carracing")
    with pytest.raises(ValueError, match="parameters"):
        c.unflatten(torch.zeros(c.param_count + 1))
    with pytest.raises(ValueError, match="parameters"):
        c.set_params(np.zeros(3))


def test_car_action_mapping():
    c = Controller(ControllerConfig(features="zh", bias=True), 2, 3, 3, "carracing")
    raw = torch.tensor([[-0.5, -1.0, -0.3], [0.7, 0.2, 0.6]])
    act = c.to_action(raw)
    # ref §5.1: steer = a0, gas = (a1 + 1)/2, brake = clip(a2, 0, 1)
    assert torch.allclose(act, torch.tensor([[-0.5, 0.0, 0.0], [0.7, 0.6, 0.6]]))


def test_doom_action_is_the_continuous_tanh_output():
    c = Controller(ControllerConfig(features="zch", bias=False), 2, 3, 1, "doom")
    c.set_params(np.linspace(-1, 1, c.param_count))
    x = torch.randn(5, c.in_dim)
    expected = torch.tanh(x @ c.params.view(c.in_dim, 1))  # ref §5.2: a = tanh(x·W), no bias, no threshold
    assert torch.allclose(c.act(x), expected)
    assert torch.allclose(c.forward(x), expected)


def test_features_are_ordered_z_c_h():
    c = Controller(ControllerConfig(features="zch"), 2, 3, 1, "doom")
    z, h, cc = torch.full((1, 2), 1.0), torch.full((1, 3), 3.0), torch.full((1, 3), 2.0)
    assert c.features(z, h, cc).tolist() == [[1, 1, 2, 2, 2, 3, 3, 3]]
    c2 = Controller(ControllerConfig(features="zh"), 2, 3, 1, "doom")
    assert c2.features(z, h, cc).tolist() == [[1, 1, 3, 3, 3]]


@pytest.mark.parametrize("cfg", [ControllerConfig(features="zh", bias=True), ControllerConfig(features="z", hidden=4)])
@pytest.mark.parametrize("rows", [1, 5])
def test_batched_form_equals_each_member_alone(cfg, rows):
    c = Controller(cfg, 3, 4, 3, "carracing").double()
    params = torch.randn(6, c.param_count, dtype=torch.float64)
    x = torch.randn(6, rows, c.in_dim, dtype=torch.float64)
    out = c.forward_batched(params, x)  # (P, R, A)
    assert out.shape == (6, rows, 3)
    for p in range(6):
        c.set_params(params[p])
        assert torch.allclose(out[p], c.forward(x[p]), atol=1e-12)


def _write_controller(path, model_config: dict, best: np.ndarray, mean: np.ndarray | None = None) -> None:
    with A.atomic_write(path, "controller", config={}, seed=0, env=model_config["env"]) as fh:
        fh.create_dataset(A.MEAN, data=best if mean is None else mean)
        fh.create_dataset(A.BEST_PARAMS, data=best)
        fh.create_group(A.HISTORY)
        A.set_model_config(fh, model_config)


def test_load_controller_round_trip(tmp_path):
    cfg = ControllerConfig(features="zch", bias=False)
    mc = _model_config(cfg, "doom", 4, 5, 1)
    c = build_controller(mc)
    best = np.random.default_rng(0).normal(size=c.param_count)
    _write_controller(tmp_path / "c.h5", mc, best, mean=np.zeros(c.param_count))
    loaded, params, meta = load_controller(tmp_path / "c.h5")
    assert meta.kind == "controller" and loaded.cfg == cfg and loaded.env == "doom"
    assert np.array_equal(params, best)
    assert torch.allclose(loaded.params, torch.as_tensor(best, dtype=torch.float32))
    _, mean, _ = load_controller(tmp_path / "c.h5", which="mean")
    assert not mean.any()


def test_load_controller_refuses_a_size_mismatch(tmp_path):
    mc = _model_config(ControllerConfig(), "carracing", 4, 5, 3)
    _write_controller(tmp_path / "c.h5", mc, np.zeros(10))
    with pytest.raises(ArtifactError, match="parameters"):
        load_controller(tmp_path / "c.h5")


def test_load_controller_refuses_another_kind(tmp_path):
    with A.atomic_write(tmp_path / "m.h5", "mdn") as fh:
        fh.create_group(A.WEIGHTS)
    with pytest.raises(ArtifactError, match="expected a controller"):
        load_controller(tmp_path / "m.h5")
