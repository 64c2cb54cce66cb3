"""Known-answer tests for the metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.models import make_model

import hopscotch_core as hc
from hopscotch_core.engine import loading
from hopscotch_core.measure import metrics


def gaussian_mmd2(d: int, s1: float, s2: float, delta2: float, sigma: float) -> float:
    """Closed form of MMD^2 between N(mu1, s1^2 I) and N(mu2, s2^2 I) for the RBF kernel of width sigma."""
    v = sigma * sigma

    def same(s):
        return (1 + 2 * s * s / v) ** (-d / 2)

    cross = (1 + (s1 * s1 + s2 * s2) / v) ** (-d / 2) * math.exp(-delta2 / (2 * (v + s1 * s1 + s2 * s2)))
    return same(s1) + same(s2) - 2 * cross


def test_mmd2_of_two_gaussians_matches_the_closed_form():
    g = torch.Generator().manual_seed(0)
    d, n = 4, 1500
    x = torch.randn(n, d, generator=g)
    y = 1.5 * torch.randn(n, d, generator=g) + torch.tensor([1.0, 0.0, 0.0, 0.0])
    expected = gaussian_mmd2(d, 1.0, 1.5, 1.0, sigma=2.0)
    assert metrics.mmd2(x, y, bandwidth=2.0) == pytest.approx(expected, abs=0.01)
    assert expected > 0.05


def test_mmd2_of_the_same_distribution_is_about_zero():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(800, 8, generator=g), torch.randn(800, 8, generator=g)
    assert abs(metrics.mmd2(x, y)) < 5e-3
    assert metrics.mmd2(x, x + 3.0) > 0.5


def test_median_heuristic_bandwidth():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[3.0], [7.0]])
    # pooled pairwise distances 1, 3, 7, 2, 6, 4 -> median (3 + 4) / 2
    assert metrics.median_distance(x, y) == 3.5
    assert metrics.mmd2(x, y) == pytest.approx(metrics.mmd2(x, y, bandwidth=3.5))


@pytest.mark.parametrize("x,y,match", [
    (torch.zeros(1, 3), torch.zeros(5, 3), "at least 2"),
    (torch.zeros(4, 3), torch.zeros(4, 2), "same d"),
    (torch.zeros(4), torch.zeros(4), "same d"),
])
def test_mmd2_bad_input(x, y, match):
    with pytest.raises(metrics.MetricError, match=match):
        metrics.mmd2(x, y)


def test_singular_values_known_answer():
    model = make_model("llama")
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(32, 32))
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight.copy_(q * 7.0)  # an orthogonal matrix times 7: sigma 7
    df = metrics.singular_values(model)
    assert list(df.columns) == ["layer", "matrix", "sigma_max"]
    assert len(df) == 4 * 7 and set(df["matrix"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                      "up_proj", "down_proj"}
    row = df[(df.layer == 1) & (df.matrix == "q_proj")]
    assert float(row.sigma_max.iloc[0]) == pytest.approx(7.0, rel=1e-5)
    w = model.model.layers[3].mlp.down_proj.weight.detach()
    assert float(df[(df.layer == 3) & (df.matrix == "down_proj")].sigma_max.iloc[0]) == pytest.approx(
        float(torch.linalg.svdvals(w)[0]), rel=1e-5)
    spec = metrics.singular_values(model, top_k=3)
    assert all(len(s) == 3 and s[0] >= s[1] >= s[2] for s in spec["spectrum"])


def test_singular_values_cache_sees_weight_changes():
    model = make_model("qwen2")
    a = metrics.singular_values(model)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.mul_(2)
    b = metrics.singular_values(model)
    i = (a.layer == 0) & (a.matrix == "o_proj")
    assert float(b[i].sigma_max.iloc[0]) == pytest.approx(2 * float(a[i].sigma_max.iloc[0]), rel=1e-5)


def test_singular_values_skip_removed_blocks():
    model = make_model("llama")
    small = hc.attach(model).skip([2]).compact()
    df = metrics.singular_values(small)
    assert len(df) == 4 * 7 - 4 and not ((df.layer == 2) & (df.matrix == "q_proj")).any()


@pytest.fixture
def rows_and_handle():
    from helpers.models import make_tokenizer
    from helpers.models import PROMPTS

    from hopscotch_core.method import data

    model = make_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:  # attention that matters, so skipping it shows
            layer.self_attn.o_proj.weight.mul_(6.0)
    answers = data.generate_answers(model, make_tokenizer(), PROMPTS, max_new_tokens=10)
    return data.pack(data.build_examples(answers), batch_tokens=64), hc.attach(model)


def test_fidelity_of_identical_models(rows_and_handle):
    from hopscotch_core.method import data

    rows, hs = rows_and_handle
    f = metrics.fidelity(hs, rows, skipped=[])
    assert f["kl"] == pytest.approx(0.0, abs=1e-6) and f["agreement"] == 1.0
    assert f["nll"] == pytest.approx(data.dataset_loss(hs.model, rows), rel=1e-6)
    assert f["ppl"] == pytest.approx(math.exp(f["nll"]), rel=1e-6)
    assert f["tokens"] == sum(r.n_tokens for r in rows)


def test_fidelity_of_a_skipped_model(rows_and_handle):
    rows, hs = rows_and_handle
    f = metrics.fidelity(hs, rows, skipped=[0, 1])
    assert f["kl"] > 1e-4 and 0 <= f["agreement"] <= 1
    assert hs.skipped == ()  # left reset


def test_layer_mmd_is_zero_before_the_first_skipped_block(rows_and_handle):
    rows, hs = rows_and_handle
    per_layer = metrics.layer_mmd(hs, rows, skipped=[2])
    assert len(per_layer) == 4
    # identical states: the unbiased estimate is ~ -2/n (slightly negative), n = 136 tokens here
    assert abs(per_layer[0]) < 0.02 and abs(per_layer[1]) < 0.02
    assert per_layer[2] > 0.03 and per_layer[3] > 0.03


def _reference_layer_mmd(hs, rows, config: dict, max_tokens: int, seed: int) -> list[float]:
    """Per layer, MMD^2 computed the plain way: every example of every row run alone with output_hidden_states=True
    (no packing, no padding, no hooks of ours), all tokens laid end to end in the rows' order, the same seeded
    positions taken on both sides, metrics.mmd2 per layer."""
    from hopscotch_core.method import data

    def every_state() -> list[torch.Tensor]:  # per layer (T_all, C)
        got = []
        with torch.no_grad():
            for row in rows:
                for a, b in data.example_spans(row):
                    out = hs.model(input_ids=row.input_ids[:, a:b], output_hidden_states=True)
                    got.append([h[0] for h in out.hidden_states[1:]])  # layer i's output: hidden_states[i + 1]
        return [torch.cat([g[i] for g in got]) for i in range(hs.num_layers)]

    before = getattr(hs.model.config, "tie_last_hidden_states", None)
    hs.model.config.tie_last_hidden_states = False  # the last entry: the last layer's output, not the final norm's
    try:
        hs.reset()
        orig = every_state()
        with hs.applied(**config):
            mod = every_state()
    finally:
        hs.model.config.tie_last_hidden_states = before
    idx = torch.randperm(orig[0].shape[0], generator=torch.Generator().manual_seed(seed))[:max_tokens]
    return [metrics.mmd2(o[idx], m[idx]) for o, m in zip(orig, mod)]


def _close(got: list[float], want: list[float]) -> None:
    """Equal up to float rounding, relative to the largest value's size."""
    scale = max(abs(w) for w in want)
    assert scale > 1e-3
    assert got == pytest.approx(want, rel=0, abs=1e-4 * scale)


def test_layer_mmd_equals_a_plain_computation(rows_and_handle):
    """layer_mmd (batched passes, hooks keeping the chosen positions, rows cut and padded), layer_mmds (one pass
    for the original, one per variant) and compare's layer_mmd (the states of its teacher-forced passes) against
    _reference_layer_mmd, for the seeded positions layer_mmd has always taken."""
    rows, hs = rows_and_handle
    assert len(rows) > 1 and len({int(r.input_ids.shape[1]) for r in rows}) > 1  # one batch needs padding
    config = {"skipped": [2], "skipped_mlp": [3]}
    other = {"skipped": [1], "scales": torch.full((hs.num_layers, 4), 0.9)}
    for max_tokens, seed in ((40, 0), (40, 7), (512, 0)):
        want = _reference_layer_mmd(hs, rows, config, max_tokens, seed)
        for batch_tokens in (1, 4096):  # each row alone, all rows in one padded forward
            got = metrics.layer_mmd(hs, rows, config["skipped"], skipped_mlp=config["skipped_mlp"],
                                    max_tokens=max_tokens, seed=seed, batch_tokens=batch_tokens)
            _close(got, want)
        tf = metrics.compare(hs, rows, {"v": config, "w": other}, mmd_tokens=max_tokens, mmd_seed=seed)
        _close(tf["v"]["layer_mmd"], want)
        _close(tf["w"]["layer_mmd"], _reference_layer_mmd(hs, rows, other, max_tokens, seed))
        assert tf["v"]["kl"] == metrics.compare(hs, rows, {"v": config})["v"]["kl"]  # the capture changes nothing
    both = metrics.layer_mmds(hs, rows, {"v": config, "w": other}, max_tokens=40)
    _close(both["v"], _reference_layer_mmd(hs, rows, config, 40, 0))
    _close(both["w"], _reference_layer_mmd(hs, rows, other, 40, 0))
    assert hs.skipped == ()
    assert metrics.layer_mmd(hs, rows, [2], max_tokens=40, layers=[3, 1]) == pytest.approx(
        [metrics.layer_mmd(hs, rows, [2], max_tokens=40)[i] for i in (3, 1)], rel=1e-9)


def test_layer_mmds_runs_one_forward_per_variant_and_one_for_the_original(rows_and_handle):
    rows, hs = rows_and_handle
    calls = []
    h = hs.model.register_forward_pre_hook(lambda mod, args: calls.append(1))
    three = {"a": {"skipped": [1]}, "b": {"skipped": [2]}, "c": {"skipped_mlp": [0]}}
    try:
        metrics.layer_mmds(hs, rows, three, batch_tokens=4096)  # every row in one forward
        assert len(calls) == 4
        calls.clear()
        metrics.layer_mmds(hs, rows, three)  # on CPU, one forward per row
        assert len(calls) == 4 * len(rows)
        calls.clear()
        metrics.compare(hs, rows, {"a": {"skipped": [1]}}, mmd_tokens=512)  # its own passes only
        assert len(calls) == 2 * len(rows)
    finally:
        h.remove()
    stop = iter([False, True])
    assert metrics.layer_mmds(hs, rows, {"a": {"skipped": [1]}, "b": {"skipped": [2]}},
                              should_stop=lambda: next(stop)) is None
    assert hs.skipped == ()


@pytest.mark.parametrize("text,strict,flex", [
    ("She makes 9 * 2 = $18 every day.\\n#### 18", "18", "18"),
    ("The answer is 1,234.", None, "1234"),
    ("#### -5\\nso -5 it is, or maybe 7", "-5", "7"),
    ("no numbers here", None, None),
    ("costs $3.50.", None, "3.50"),
])
def test_answer_extraction(text, strict, flex):
    assert metrics.extract_strict(text) == strict
    assert metrics.extract_flexible(text) == flex


def test_compare_runs_several_variants_against_one_original(rows_and_handle):
    from hopscotch_core.method import data

    rows, hs = rows_and_handle
    scales = torch.full((4, 4), 0.9)
    res = metrics.compare(hs, rows, {"a": {"skipped": [1]}, "b": {"skipped": [1], "scales": scales}})
    assert res["original"]["nll"] == pytest.approx(data.dataset_loss(hs.model, rows), rel=1e-6)
    assert res["a"] == metrics.fidelity(hs, rows, [1])
    assert res["b"] == metrics.fidelity(hs, rows, [1], scales)
    assert res["a"]["kl"] != res["b"]["kl"] and hs.skipped == ()


def test_singular_values_are_kept_on_disk_for_the_same_weights_only(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOTCH_CACHE", str(tmp_path / "cache"))
    model, _ = hc.load_model(tiny_dir, device="cpu")
    want = metrics.singular_values(model)
    (file,) = (tmp_path / "cache" / "derived").glob("singular-values-0-*.json")
    # a new process loading the same files reads the file: poison it to see that it is used
    again, _ = hc.load_model(tiny_dir, device="cpu")
    rows = [dict(r, sigma_max=-1.0) for r in want.to_dict("records")]
    file.write_text(json.dumps({"rows": rows}))
    assert (metrics.singular_values(again).sigma_max == -1.0).all()
    # weights changed in memory since the load: not the file's weights any more, computed afresh
    with torch.no_grad():
        again.model.layers[0].mlp.up_proj.weight.mul_(3)
    got = metrics.singular_values(again)
    i = (got.layer == 0) & (got.matrix == "up_proj")
    assert float(got[i].sigma_max.iloc[0]) == pytest.approx(3 * float(want[i].sigma_max.iloc[0]), rel=1e-5)
    # other files (a re-saved model) have another stamp; a damaged cache file is recomputed, not fatal
    model.save_pretrained(tmp_path / "other")
    third, _ = hc.load_model(tmp_path / "other", device="cpu")
    assert loading.weights_stamp(third) != loading.weights_stamp(model)
    file.write_text("{not json")
    fresh, _ = hc.load_model(tiny_dir, device="cpu")
    torch.testing.assert_close(torch.tensor(metrics.singular_values(fresh).sigma_max.values),
                               torch.tensor(want.sigma_max.values))


def test_compare_per_example_values_are_each_example_alone(rows_and_handle):
    """per_example: each example's token means equal a packing of that example alone (its own row), and their
    token-weighted mean is the overall figure; rows hold several examples, so the split by example matters."""
    from hopscotch_core.method import data

    rows, hs = rows_and_handle
    assert any(r.n_examples > 1 for r in rows)
    variants = {"a": {"skipped": [1]}, "b": {"skipped": [0, 2], "scales": torch.full((4, 4), 0.9)}}
    res = metrics.compare(hs, rows, variants, per_example=True)
    examples = [None] * sum(r.n_examples for r in rows)
    for r in rows:  # the examples back from the rows, in data.pack's numbering
        starts = [i for i, p in enumerate(r.position_ids[0].tolist()) if p == 0] + [r.input_ids.shape[1]]
        for slot, ex in enumerate(r.example_ids):
            ids = r.input_ids[0, starts[slot]:starts[slot + 1]].tolist()
            n = sum(1 for pos in r.positions.tolist() if starts[slot] <= pos < starts[slot + 1])
            examples[ex] = data.Example(ids, [-100] * (len(ids) - n) + ids[len(ids) - n:])
    for e, ex in enumerate(examples):
        alone = metrics.compare(hs, data.pack([ex], 10_000), variants)
        assert res["original"]["examples"]["tokens"][e] == alone["original"]["tokens"]
        assert res["original"]["examples"]["nll"][e] == pytest.approx(alone["original"]["nll"], rel=1e-4)
        for name in variants:
            for fig in ("nll", "kl", "agreement"):
                assert res[name]["examples"][fig][e] == pytest.approx(alone[name][fig], rel=1e-4, abs=1e-6)
    w = res["original"]["examples"]["tokens"]
    for name in ("original", *variants):
        for fig in ("nll", "kl", "agreement") if name != "original" else ("nll",):
            v = res[name]["examples"][fig]
            assert sum(a * b for a, b in zip(v, w)) / sum(w) == pytest.approx(res[name][fig], rel=1e-5)
    assert "examples" not in metrics.compare(hs, rows, variants)["a"]  # only when asked
