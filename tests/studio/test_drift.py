"""drift.py and figures.drift: the projections equal a PCA computed here with numpy on states collected here with
plain forward hooks (no Hopscotch handle); sub-sampling, progress, stop and reuse; the figure's data."""

from __future__ import annotations

import copy
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers.models import make_model, make_tokenizer

import hopscotch_core as hc
from hopscotch_core.engine import priority
from hopscotch_core.studio import compare, drift, figures
from hopscotch_core.measure import metrics

PROMPTS = ["what is 1 plus 2? tell me", "hi there", "name three colours please", "2*3=", "a longer prompt with words"]
SKIP = 1


def stock_states(model, rows) -> dict[int, np.ndarray]:
    """Every layer's output state at every token of `rows` laid end to end, from forward hooks on a stock model:
    {layer: (T, C) float64}."""
    got: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(model.model.layers))}
    hooks = [layer.register_forward_hook(
        lambda mod, args, out, i=i: got[i].append((out[0] if isinstance(out, tuple) else out)[0].detach().clone()))
        for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            for r in rows:
                model(input_ids=r.input_ids, position_ids=r.position_ids, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {i: torch.cat(g).double().numpy() for i, g in got.items()}


@pytest.fixture(scope="module")
def world():
    model = make_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:  # attention that matters, so skipping it shows
            layer.self_attn.o_proj.weight.mul_(6.0)
    tok = make_tokenizer()
    rows = compare.prompt_rows(tok, PROMPTS)
    # the modified model, built independently: block SKIP's attention output is exactly zero (o_proj has no
    # bias), so its residual passes unchanged, which is what skipping the block computes
    skipped = copy.deepcopy(model)
    with torch.no_grad():
        skipped.model.layers[SKIP].self_attn.o_proj.weight.zero_()
    ref = {"original": stock_states(model, rows), "modified": stock_states(skipped, rows)}
    pos = torch.cat([r.position_ids[0] for r in rows])
    return SimpleNamespace(model=model, tok=tok, rows=rows, ref=ref, pos=pos, total=len(pos))


@pytest.fixture
def hs(world):
    h = hc.attach(world.model)
    yield h
    h.detach()


def numpy_pca(o: np.ndarray, m: np.ndarray):
    """Reference: PCA by numpy SVD of the centred original states; (orig (n, 2), mod (n, 2), ratio (2,))."""
    mu = o.mean(0)
    _, s, vt = np.linalg.svd(o - mu, full_matrices=False)
    v = vt[:2].T  # (C, 2)
    return (o - mu) @ v, (m - mu) @ v, (s[:2] ** 2) / (s ** 2).sum()


def same_up_to_sign(got: np.ndarray, ref: np.ndarray, signs: np.ndarray) -> None:
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref * signs, rtol=0, atol=1e-6 * scale)


def test_projection_equals_an_independent_pca_of_independently_collected_states(world, hs):
    res = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=48, seed=3)
    idx = res.positions
    assert res.layers == [0, 1, 2, 3] and res.skipped == [SKIP] and res.tokens == 48
    assert res.total_tokens == world.total and res.dropped == len(PROMPTS)  # first token of each prompt
    for j, layer in enumerate(res.layers):
        o, m = world.ref["original"][layer][idx], world.ref["modified"][layer][idx]  # (48, C), same positions
        po, pm, ratio = numpy_pca(o, m)
        signs = np.sign((res.original[j] * po).sum(0))  # a principal axis is defined up to its sign
        same_up_to_sign(res.original[j], po, signs)
        same_up_to_sign(res.modified[j], pm, signs)  # the same axes project the modified states
        np.testing.assert_allclose(res.explained[j], ratio, rtol=1e-8)
        moved = np.linalg.norm(pm - po, axis=1).mean()
        assert res.drift[j] == pytest.approx(moved / np.sqrt((po ** 2).sum(1).mean()), rel=1e-6)
        assert res.mmd[j] == pytest.approx(metrics.mmd2(torch.from_numpy(o), torch.from_numpy(m)), rel=1e-6,
                                           abs=1e-9)
    # nothing changes before the skipped block; after it the modified cloud moves
    assert res.drift[0] == 0.0 and np.array_equal(res.original[0], res.modified[0])
    assert all(d > 0.05 for d in res.drift[SKIP:])
    assert hs.skipped == () and hs._probe is None  # left reset

    fig = figures.drift(res, [SKIP])  # the figure shows exactly these projections
    for j, layer in enumerate(res.layers):
        o, m = world.ref["original"][layer][idx], world.ref["modified"][layer][idx]
        po, pm, _ = numpy_pca(o, m)
        signs = np.sign((res.original[j] * po).sum(0))
        for side, ref in (("original", po), ("modified", pm)):
            (t,) = [t for t in fig.data if t.meta == {"layer": layer, "side": side}]
            same_up_to_sign(np.column_stack([t.x, t.y]), ref, signs)


def test_a_runs_whole_trained_state_is_measured(world):
    """Channel multipliers and low-rank deltas (granularity channel, --lora-rank) take part in the modified pass,
    as in the generation beside the view: its states equal a stock copy with both folded into the weights by hand
    (multipliers scale the rows of o_proj / down_proj; a delta adds B @ A to the weight)."""
    g = torch.Generator().manual_seed(0)
    L, C = len(world.model.model.layers), world.model.config.hidden_size
    channels = 1 + 0.3 * torch.randn(L, 2, C, generator=g)
    inter, rank = world.model.config.intermediate_size, 2
    lora = {f"{i}.{p}.{m}": torch.zeros((rank, inter if p == "mlp" else C) if m == "A" else (C, rank))
            for i in range(L) for p in ("attn", "mlp") for m in "AB"}  # every branch has a slot; B = 0: no change
    lora.update({"2.mlp.A": torch.randn(rank, inter, generator=g) * 0.05, "2.mlp.B": torch.randn(C, rank, generator=g),
                 "3.attn.A": torch.randn(rank, C, generator=g) * 0.05, "3.attn.B": torch.randn(C, rank, generator=g)})
    ref = copy.deepcopy(world.model)
    with torch.no_grad():
        layers = ref.model.layers
        layers[2].mlp.down_proj.weight.add_(lora["2.mlp.B"] @ lora["2.mlp.A"])
        layers[3].self_attn.o_proj.weight.add_(lora["3.attn.B"] @ lora["3.attn.A"])
        for i, layer in enumerate(layers):
            layer.self_attn.o_proj.weight.mul_(channels[i, 0][:, None])
            layer.mlp.down_proj.weight.mul_(channels[i, 1][:, None])
        layers[SKIP].self_attn.o_proj.weight.zero_()
    want = stock_states(ref, world.rows)  # (copied before attaching: a copy of an attached model shares its hooks)
    hs = hc.attach(world.model)
    res = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=40, seed=1, channel_scales=channels,
                            lora=lora)
    for j, layer in enumerate(res.layers):
        m = res.modified[j]
        o = world.ref["original"][layer][res.positions]
        mu = o.mean(0)
        _, _, vt = np.linalg.svd(o - mu, full_matrices=False)
        pm = (want[layer][res.positions] - mu) @ vt[:2].T
        signs = np.sign((res.original[j] * ((o - mu) @ vt[:2].T)).sum(0))
        same_up_to_sign(m, pm, signs)
    plain = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=40, seed=1)
    assert plain.mmd[-1] != pytest.approx(res.mmd[-1], rel=1e-3)  # the trained state changes what is measured
    assert hs.granularity == "scalar" and hs.lora_rank == 0  # the handle is left as it was
    hs.detach()


def test_sub_sampling_keeps_max_tokens_positions_the_same_on_both_sides(world, hs):
    eligible = set(torch.nonzero(world.pos != 0).reshape(-1).tolist())
    res = drift.layer_drift(hs, world.rows, skipped=[], max_tokens=10, seed=5)
    assert res.tokens == 10 and len(set(res.positions.tolist())) == 10 and set(res.positions.tolist()) <= eligible
    assert all(s.shape == (10, 32) for s in res.original_states.values())  # only the sampled states are kept
    # nothing skipped: the same tokens on both sides give the same points and no drift
    assert all(np.array_equal(o, m) for o, m in zip(res.original, res.modified)) and res.drift == [0.0] * 4
    again = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=10, seed=5)
    other = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=10, seed=6)
    assert np.array_equal(again.positions, res.positions) and not np.array_equal(other.positions, res.positions)
    for j in range(4):  # the states kept are those of the sampled positions (float32 rounding apart)
        ref = world.ref["original"][j][res.positions]
        np.testing.assert_allclose(again.original_states[j].double().numpy(), ref, atol=1e-6 * np.abs(ref).max())
    everything = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=10_000, drop_first=False)
    assert everything.tokens == world.total and sorted(everything.positions.tolist()) == list(range(world.total))
    assert everything.dropped == 0


def test_mmd_equals_layer_mmd_when_first_tokens_are_kept(world, hs):
    res = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=40, seed=2, drop_first=False)
    want = metrics.layer_mmd(hs, world.rows, [SKIP], max_tokens=40, seed=2)  # batched passes: rounding apart
    assert res.mmd == pytest.approx(want, rel=0, abs=1e-4 * max(abs(w) for w in want))
    # and layer_mmd still takes the same seeded positions it took before states were sub-sampled in the probe
    idx = torch.randperm(world.total, generator=torch.Generator().manual_seed(2))[:40]
    np.testing.assert_array_equal(res.positions, idx.numpy())


def test_progress_stop_and_reuse(world, hs):
    calls = []
    res = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=30,
                            on_progress=lambda s, n, info: calls.append((s, n, info["stage"])))
    n_rows = len(world.rows)  # 30 of ~80 tokens: every row holds some
    total = 2 * n_rows * 4 + 4
    assert [c[0] for c in calls] == list(range(1, total + 1)) and {c[1] for c in calls} == {total}
    assert [c[2] for c in calls] == ["original"] * (n_rows * 4) + ["modified"] * (n_rows * 4) + ["analysis"] * 4

    asked = []
    stopped = drift.layer_drift(hs, world.rows, skipped=[SKIP], max_tokens=30,
                                should_stop=lambda: asked.append(1) or len(asked) > 6)
    assert stopped is None and hs.skipped == () and hs._probe is None

    calls.clear()  # another skip set on the same tokens: the original's pass is reused
    again = drift.layer_drift(hs, world.rows, skipped=[2], max_tokens=30, reuse=res,
                              on_progress=lambda s, n, info: calls.append(info["stage"]))
    assert "original" not in calls and again.seconds["original"] == 0.0
    fresh = drift.layer_drift(hs, world.rows, skipped=[2], max_tokens=30)
    assert again.mmd == fresh.mmd and all(np.array_equal(a, b) for a, b in zip(again.modified, fresh.modified))
    calls.clear()  # other positions: not reusable
    drift.layer_drift(hs, world.rows, skipped=[2], max_tokens=20, reuse=res,
                      on_progress=lambda s, n, info: calls.append(info["stage"]))
    assert "original" in calls


def test_bad_input(world, hs):
    with pytest.raises(metrics.MetricError, match="out of range"):
        drift.layer_drift(hs, world.rows, [1], layers=[0, 9])
    with pytest.raises(metrics.MetricError, match="at least 4 tokens"):
        drift.layer_drift(hs, world.rows, [1], max_tokens=3)
    rows = compare.prompt_rows(world.tok, ["abc"])
    with pytest.raises(metrics.MetricError, match="first token"):
        drift.layer_drift(hs, rows, [1])


def test_prompt_drift_borrows_a_shared_model(world):
    lock = threading.Lock()
    res = drift.prompt_drift(world.model, world.tok, PROMPTS, skipped=[SKIP], lock=lock, max_tokens=30)
    assert hc.handle_of(world.model) is None and not lock.locked()
    with hc.attach(world.model) as hs:
        direct = drift.layer_drift(hs, world.rows, [SKIP], max_tokens=30)
    assert res.mmd == direct.mmd and np.array_equal(res.positions, direct.positions)
    table = res.table()
    assert list(table.columns) == ["layer", "skipped", "mmd2", "drift", "explained_1", "explained_2"]
    assert table["skipped"].tolist() == [False, True, False, False] and table["mmd2"].tolist() == res.mmd


# ------------------------------------------------------------------------------------------------ figure
def fake_result(n_layers: int = 30, n: int = 7, seed: int = 0) -> drift.Drift:
    rng = np.random.default_rng(seed)
    return drift.Drift(layers=list(range(n_layers)), skipped=[4, 17], positions=rng.permutation(100)[:n],
                       total_tokens=100, dropped=2, mmd=list(rng.random(n_layers)),
                       original=[rng.normal(size=(n, 2)) for _ in range(n_layers)],
                       modified=[rng.normal(size=(n, 2)) for _ in range(n_layers)],
                       explained=[np.array([0.5, 0.2])] * n_layers, drift=list(rng.random(n_layers)))


def test_drift_figure_data_is_the_result():
    res = fake_result()
    fig = figures.drift(res)
    bars = [t for t in fig.data if t.type == "bar"][0]
    assert list(bars.x) == res.layers and list(bars.y) == res.mmd
    colours = list(bars.marker.color)
    assert colours[4] == colours[17] == "#d62728" and colours[5] == "#1f77b4"  # red: skipped (result.skipped)
    line = next(t for t in fig.data if t.name == "drift (right axis)")
    assert list(line.y) == res.drift
    shown = figures.drift_panels(res, res.skipped)
    assert len(shown) == 12 and {4, 17} <= set(shown)
    by_drift = sorted((i for i in res.layers if i not in (4, 17)), key=lambda i: -res.drift[i])[:10]
    assert set(shown) == {4, 17, *by_drift}
    panels = [t for t in fig.data if t.meta]
    assert [t.meta["layer"] for t in panels] == [i for i in shown for _ in range(2)]
    for t in panels:
        pts = (res.original if t.meta["side"] == "original" else res.modified)[t.meta["layer"]]
        assert np.array_equal(np.asarray(t.x), pts[:, 0]) and np.array_equal(np.asarray(t.y), pts[:, 1])
        assert list(t.customdata) == list(res.positions)  # hover names the token position
    outlined = [w == "black" for w in bars.marker.line.color]
    assert [i for i, o in zip(res.layers, outlined) if o] == shown

    few = figures.drift(res, skipped=[], layers=[0, 29])
    assert [t.meta["layer"] for t in few.data if t.meta] == [0, 0, 29, 29]
    assert "#d62728" not in list(few.data[0].marker.color)
    with pytest.raises(ValueError, match="not measured"):
        figures.drift(res, layers=[30])
    small = fake_result(n_layers=4)
    assert figures.drift_panels(small) == [0, 1, 2, 3]
    assert "nothing measured" in str(figures.drift(None).layout.annotations[0].text)


def test_prompt_drift_lets_the_lock_go_between_its_passes():
    """The shared model's lock is held for each forward pass, not across both and the analysis: another user
    (a side-by-side generation) gets in between."""
    events: list[str] = []

    class Recorded:
        def __init__(self):
            self.lock = threading.Lock()

        def __enter__(self):
            self.lock.acquire()
            events.append("lock")

        def __exit__(self, *exc):
            events.append("unlock")
            self.lock.release()

    model, tok = make_model("llama"), make_tokenizer()
    prompts = ["what is 1 plus 2?", "hello there, how are you?"]
    want = drift.prompt_drift(model, tok, prompts, [1], max_tokens=16)
    got = drift.prompt_drift(model, tok, prompts, [1], max_tokens=16, lock=Recorded(),
                             on_progress=lambda step, total, info: events.append(info["stage"]))
    stages = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    assert stages == ["lock", "original", "unlock", "lock", "modified", "unlock", "analysis"], stages
    np.testing.assert_allclose(got.mmd, want.mmd)
    assert hc.handle_of(model) is None


def _forwards(model) -> tuple[list, object]:
    """(thread name, time) of every decoder forward of `model`, and the hook's handle."""
    got: list[tuple[str, float]] = []
    hook = model.model.register_forward_pre_hook(
        lambda mod, args: got.append((threading.current_thread().name, time.perf_counter())))
    return got, hook


def _generate(model, tok, lock, out: list, pause: float = 0.01) -> None:
    """A side-by-side generation consumed slowly (a page drawing each step), in this thread."""
    for step in compare.stream_pair(model, tok, "hello there, how are you?", [2], max_new_tokens=24, lock=lock,
                                    hold_s=0.0):  # lets the lock go after every step: others could get in
        out.append(step)
        time.sleep(pause)


def test_drift_waits_while_a_generation_runs_and_then_gives_the_same_result():
    """Background analysis started during a generation on the same model runs no forward pass until the
    generation has ended, then finishes with exactly the result it gives alone."""
    model, tok = make_model("llama"), make_tokenizer()
    prompts = ["what is 1 plus 2?", "hello there, how are you?"]
    want = drift.prompt_drift(model, tok, prompts, [1], max_tokens=16)
    lock, out, steps = threading.Lock(), {}, []
    forwards, hook = _forwards(model)
    gate = priority.gate(model)
    waits = gate.waits
    bg = threading.Thread(name="background", target=lambda: out.update(
        res=drift.prompt_drift(model, tok, prompts, [1], max_tokens=16, lock=lock)))
    try:
        gen = compare.stream_pair(model, tok, "hello there, how are you?", [2], max_new_tokens=24, lock=lock)
        steps.append(next(gen))  # the generation is running: it holds the model's gate until it ends
        bg.start()
        for step in gen:
            steps.append(step)
            time.sleep(0.01)
        bg.join(60)
    finally:
        hook.remove()
    assert not bg.is_alive() and len(steps) == 24
    gen_t = [t for name, t in forwards if name.startswith("stream_pair")]
    bg_t = [t for name, t in forwards if name == "background"]
    assert gen_t and bg_t and max(gen_t) < min(bg_t)  # no background forward while the generation ran
    assert gate.waits > waits and not gate.busy
    # the same up to float rounding (the generation's workers may change torch's thread count, hence sum order)
    np.testing.assert_allclose(out["res"].mmd, want.mmd, rtol=1e-5, atol=1e-8)
    for a, b in zip(out["res"].modified, want.modified):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert hc.handle_of(model) is None


def test_a_generation_arriving_mid_pass_goes_first():
    """A generation that starts while the drift's first pass runs waits one layer: the pass is abandoned (the lock
    let go), the generation runs alone, and the pass runs again after it; the result is unchanged."""
    model, tok = make_model("llama"), make_tokenizer()
    prompts = ["what is 1 plus 2?", "hello there, how are you?"]
    want = drift.prompt_drift(model, tok, prompts, [1], max_tokens=16)
    gate = priority.gate(model)
    lock, steps, stages = threading.Lock(), [], []
    gen = threading.Thread(target=_generate, args=(model, tok, lock, steps))

    def on_progress(step, total, info):
        stages.append((info["stage"], time.perf_counter()))
        if info["stage"] == "original" and not gen.is_alive() and not steps:
            gen.start()
            deadline = time.time() + 10
            while not gate.busy and time.time() < deadline:  # the generation has asked for the model
                time.sleep(0.001)

    forwards, hook = _forwards(model)
    try:
        got = drift.prompt_drift(model, tok, prompts, [1], max_tokens=16, lock=lock, on_progress=on_progress)
        gen.join(60)
    finally:
        hook.remove()
    assert len(steps) == 24
    gen_t = [t for name, t in forwards if name.startswith("stream_pair")]
    bg_layers = [t for s, t in stages]  # every layer the drift's passes and analysis went through
    assert not [t for t in bg_layers if min(gen_t) < t < max(gen_t)]  # none while the generation ran
    before = [s for s, t in stages if t < min(gen_t)]
    assert before and set(before) == {"original"}  # the first pass had begun, and was abandoned ...
    after = [s for s, t in stages if t > max(gen_t)]
    n_layers = model.config.num_hidden_layers
    assert after.count("original") >= n_layers  # ... and ran again in full after the generation
    assert stages[-1][0] == "analysis"
    np.testing.assert_allclose(got.mmd, want.mmd, rtol=1e-5, atol=1e-8)
