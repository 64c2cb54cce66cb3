"""The Hopscotch handle: scalars, skip set, freezing, detach, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers.models import N_LAYERS, make_model

import hopscotch_core as hc


@pytest.fixture
def llama():
    return make_model("llama")


def test_scales_are_one_float32_parameter_and_only_they_train(llama, ids):
    hs = hc.attach(llama)
    assert isinstance(hs.scales, torch.nn.Parameter)
    assert hs.scales.dtype == torch.float32 and hs.scales.shape == (N_LAYERS, 4) and hs.scales.requires_grad
    assert not any(p.requires_grad for p in llama.parameters())
    hs.skip([1])
    loss = llama(ids, labels=ids).loss
    loss.backward()
    g = hs.scales.grad
    assert g is not None and torch.isfinite(g).all()
    assert g[1, 0] == 0, "a skipped block's b_att is not a free parameter"
    assert g[1, 1] != 0, "a skipped block's s_att stays trainable"
    assert (g[[0, 2, 3]] != 0).all()
    assert all(p.grad is None for p in llama.parameters())


def test_scales_stay_float32_on_a_bf16_model(ids):
    model = make_model("qwen2", dtype=torch.bfloat16)
    ref = model(ids).logits
    hs = hc.attach(model)
    assert hs.scales.dtype == torch.float32
    out = model(ids).logits
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    # an Adam step of 3e-3 near 1.0 is kept (bf16 spacing there is 2**-7 and would drop it)
    opt = torch.optim.Adam([hs.scales], lr=3e-3)
    model(ids, labels=ids).loss.backward()
    opt.step()
    moved = (hs.scales.detach() - 1).abs()
    assert ((moved > 1e-3) & (moved < 4e-3)).float().mean() > 0.9


def test_skipped_attention_is_not_called(llama, ids):
    calls = [0] * N_LAYERS
    for i, layer in enumerate(llama.model.layers):
        layer.self_attn.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    hs = hc.attach(llama)
    hs.skip([0, 2])
    llama(ids)
    assert calls == [0, 1, 0, 1]
    hs.unskip(2)
    llama(ids)
    assert calls == [0, 2, 1, 2]


def test_skip_and_unskip(llama):
    hs = hc.attach(llama)
    hs.skip([0, 5 % N_LAYERS])
    assert hs.skipped == (0, 1)
    hs.skip(3)
    hs.skip(np.int64(0))  # already skipped: stays
    assert hs.skipped == (0, 1, 3)
    assert hs.scales[[0, 1, 3], 0].eq(0).all()
    hs.unskip([1])
    assert hs.skipped == (0, 3) and hs.scales[1, 0] == 1.0
    hs.set_skipped([2])
    assert hs.skipped == (2,)
    hs.reset()
    assert hs.skipped == () and torch.equal(hs.scales.detach(), torch.ones(N_LAYERS, 4))


@pytest.mark.parametrize("bad", [[N_LAYERS], [-1], [1, 1], [0, 1.0], ["2"], [True], [None], 2.5])
def test_bad_block_indices_are_refused_and_nothing_is_applied(llama, bad):
    hs = hc.attach(llama)
    hs.skip([0])
    before = hs.scales.detach().clone()
    with pytest.raises(hc.InvalidBlocksError):
        hs.skip(bad)
    with pytest.raises(hc.InvalidBlocksError):
        hs.unskip(bad)
    assert hs.skipped == (0,) and torch.equal(hs.scales.detach(), before)


def test_error_messages_are_specific(llama):
    hs = hc.attach(llama)
    with pytest.raises(hc.InvalidBlocksError, match=rf"out of range.*0\.\.{N_LAYERS - 1}"):
        hs.skip([N_LAYERS + 3])
    with pytest.raises(hc.InvalidBlocksError, match="more than once"):
        hs.skip([2, 2])
    with pytest.raises(hc.InvalidScalesError, match=r"shape \(4, 4\)"):
        hs.set_scales(torch.ones(3, 4))


@pytest.mark.parametrize("bad", [torch.ones(N_LAYERS, 3), torch.ones(N_LAYERS + 1, 4), torch.ones(4 * N_LAYERS),
                                 torch.full((N_LAYERS, 4), math.nan), torch.full((N_LAYERS, 4), math.inf)])
def test_bad_scales_are_refused(llama, bad):
    hs = hc.attach(llama)
    with pytest.raises(hc.InvalidScalesError):
        hs.set_scales(bad)
    assert torch.equal(hs.scales.detach(), torch.ones(N_LAYERS, 4))


def test_set_scales_keeps_skipped_b_att_zero(llama):
    hs = hc.attach(llama).skip([2])
    hs.set_scales(torch.full((N_LAYERS, 4), 0.5))
    assert hs.scales[2, 0] == 0 and hs.scales[2, 1] == 0.5 and hs.scales[0, 0] == 0.5


def test_detach_restores_the_model_bit_for_bit(family, ids):
    model = make_model(family)
    model.lm_head.weight.requires_grad_(False)  # a user's own flags survive
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ref = model(ids).logits
    hs = hc.attach(model)
    hs.set_scales(torch.rand(N_LAYERS, 4)).skip([0, 2])
    assert (model(ids).logits - ref).abs().max() > 1e-3
    assert hs.detach() is model
    assert hc.handle_of(model) is None
    assert all("forward" not in vars(layer) for layer in model.get_decoder().layers)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model(ids).logits, ref)
    with pytest.raises(hc.DetachedError):
        hs.skip([1])
    hc.attach(model).detach()  # attach again after detach works


def test_context_manager_detaches(llama, ids):
    ref = llama(ids).logits
    with hc.attach(llama) as hs:
        hs.skip([1])
        assert not torch.equal(llama(ids).logits, ref)
    assert torch.equal(llama(ids).logits, ref) and hc.handle_of(llama) is None


def test_double_attach_is_refused(llama):
    hs = hc.attach(llama)
    with pytest.raises(hc.HopscotchError, match="already"):
        hc.attach(llama)
    assert hc.handle_of(llama) is hs


def test_scaled_residual_changes_output_as_expected(llama, ids):
    """Halving b_mlp and s_mlp of the last layer halves its output: out = b_mlp * M(x1) + s_mlp * x1."""
    hs = hc.attach(llama)
    captured = {}
    llama.model.layers[-1].register_forward_hook(lambda m, a, out: captured.__setitem__("o", out))
    llama(ids)
    full = captured["o"]
    s = torch.ones(N_LAYERS, 4)
    s[-1, 2:] = 0.5
    hs.set_scales(s)
    llama(ids)
    torch.testing.assert_close(captured["o"], full * 0.5, atol=1e-5, rtol=1e-5)


def test_inference_and_training_paths_agree(llama, ids):
    """No-grad forwards read the scalars as floats once per forward; the result equals the autograd path."""
    hs = hc.attach(llama)
    torch.manual_seed(3)
    hs.set_scales(torch.rand(N_LAYERS, 4) + 0.5).skip([1])
    with_grad = llama(ids).logits
    with torch.no_grad():
        no_grad = llama(ids).logits
        torch.testing.assert_close(no_grad, with_grad, atol=1e-5, rtol=1e-5)
        hs.scales.data[2] = 0.3  # even a change through .data is seen by the next forward
        changed = llama(ids).logits
    assert (changed - no_grad).abs().max() > 1e-3
    assert hs._snapshot is None  # nothing stale is kept between forwards


def test_all_ones_inference_is_bitwise_the_stock_model(tiny, ids):
    with torch.no_grad():
        ref = tiny(ids).logits
        hc.attach(tiny)
        assert torch.equal(tiny(ids).logits, ref)


def test_whole_layer_removal_makes_the_layer_the_identity(llama, ids):
    hs = hc.attach(llama)
    calls = []
    llama.model.layers[2].mlp.register_forward_hook(lambda *a: calls.append(1))
    hs.skip([2]).skip_mlp([2])
    seen = {}
    with hs.probe(lambda i, x, x1, out: seen.__setitem__(i, (x, x1, out))):
        llama(ids, labels=ids).loss.backward()
    x, x1, out = seen[2]
    assert torch.equal(out, x) and torch.equal(x1, x) and calls == []
    assert hs.scales.grad[2, 2] == 0 and hs.scales.grad[2, 3] != 0
    assert hs.skipped_mlp == (2,) and hs.effective_scales()[2, 2] == 0
    hs.unskip_mlp(2)
    assert hs.skipped_mlp == () and hs.scales[2, 2] == 1
    assert hs._probe is None


def test_probe_sees_every_layer(llama, ids):
    hs = hc.attach(llama)
    seen = []
    with torch.no_grad(), hs.probe(lambda i, x, x1, out: seen.append((i, x.shape, out.shape))):
        llama(ids)
    assert [s[0] for s in seen] == list(range(N_LAYERS)) and seen[0][1] == (2, 12, 32)


def test_configure_and_applied(llama):
    hs = hc.attach(llama).skip([3])
    s = torch.full((N_LAYERS, 4), 0.5)
    hs.configure([1], s, skipped_mlp=[2])
    assert hs.skipped == (1,) and hs.skipped_mlp == (2,) and hs.scales[0, 0] == 0.5 and hs.scales[1, 0] == 0
    with hs.applied([0, 2]):
        assert hs.skipped == (0, 2) and hs.skipped_mlp == () and hs.scales[3, 3] == 1
    assert hs.skipped == () and torch.equal(hs.scales.detach(), torch.ones(N_LAYERS, 4))


# ----------------------------------------------------------------------------------------------- per_row
def _row_logits(model, ids, skipped, scales):
    """Logits of one configuration on its own: the single-configuration handle (checked against the reference
    formula in engine/test_families.py)."""
    with hc.attach(model) as hs, hs.applied(skipped, scales), torch.no_grad():
        return model(ids, use_cache=False).logits


def test_per_row_runs_each_rows_configuration(tiny, ids):
    g = torch.Generator().manual_seed(3)
    scales = 1 + 0.3 * torch.randn(N_LAYERS, 4, generator=g)
    configs = [((), None), ([1, 2], scales), ([2], None)]
    batch = ids[:1].expand(len(configs), -1)
    want = [_row_logits(tiny, ids[:1], s, sc) for s, sc in configs]
    with hc.attach(tiny) as hs, hs.per_row(configs), torch.no_grad():
        got = tiny(batch, use_cache=False).logits
    for r, w in enumerate(want):
        torch.testing.assert_close(got[r:r + 1], w, atol=1e-5, rtol=1e-5)
    assert hc.handle_of(tiny) is None


def test_per_row_computes_a_block_once_unless_every_row_skips_it(llama, ids):
    calls = [0] * N_LAYERS
    for i, layer in enumerate(llama.model.layers):
        layer.self_attn.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    with hc.attach(llama) as hs, hs.per_row([([0, 1], None), ([0, 3], None)]), torch.no_grad():
        llama(ids[:1].expand(2, -1))
    assert calls == [0, 1, 1, 1]


def test_per_row_decodes_with_the_kv_cache_like_a_full_forward(llama, ids):
    configs = [((), None), ([0, 2], None)]
    seq = ids[:1].expand(2, -1)
    with hc.attach(llama) as hs, hs.per_row(configs), torch.no_grad():
        full = llama(seq, use_cache=False).logits[:, -1]
        out = llama(seq[:, :-3], use_cache=True)
        cache = out.past_key_values
        for t in range(seq.shape[1] - 3, seq.shape[1]):
            out = llama(seq[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
    torch.testing.assert_close(out.logits[:, -1], full, atol=1e-5, rtol=1e-5)


def test_per_row_refuses_a_batch_of_another_size_and_bad_configurations(llama, ids):
    with hc.attach(llama) as hs:
        with hs.per_row([((), None), ([1], None)]), pytest.raises(hc.HopscotchError, match="2 configurations"):
            llama(ids[:1])
        with pytest.raises(hc.InvalidBlocksError):
            with hs.per_row([([N_LAYERS], None)]):
                pass
        with pytest.raises(hc.InvalidScalesError):
            with hs.per_row([((), torch.ones(N_LAYERS, 3))]):
                pass
        llama(ids[:1])  # back to the handle's own (all-ones) configuration


def test_in_thread_configuration_is_seen_by_that_thread_only(tiny, ids):
    import threading

    scales = 1 + 0.3 * torch.randn(N_LAYERS, 4, generator=torch.Generator().manual_seed(5))
    want_main = _row_logits(tiny, ids, [0], None)
    want_worker = _row_logits(tiny, ids, [1, 3], scales)
    got: dict[str, torch.Tensor] = {}
    inside, release = threading.Event(), threading.Event()

    def worker(hs):
        with hs.in_thread([1, 3], scales), torch.no_grad():
            inside.set()
            release.wait(10)  # the main thread runs its own forward while this configuration is set
            got["worker"] = tiny(ids, use_cache=False).logits

    with hc.attach(tiny) as hs:
        hs.skip([0])
        t = threading.Thread(target=worker, args=(hs,))
        t.start()
        inside.wait(10)
        with torch.no_grad():
            got["main"] = tiny(ids, use_cache=False).logits
        release.set()
        t.join()
        assert hs.skipped == (0,)
    torch.testing.assert_close(got["main"], want_main, atol=0, rtol=0)
    torch.testing.assert_close(got["worker"], want_worker, atol=0, rtol=0)


def test_peft_names_do_what_ours_do(tiny, ids, tmp_path):
    g = torch.Generator().manual_seed(2)
    scales = torch.ones(N_LAYERS, 4)  # b scalars only: the fold is then exact (folding.py, on epsilon)
    scales[:, [0, 2]] = 0.8 + 0.4 * torch.rand(N_LAYERS, 2, generator=g)
    with torch.no_grad():
        stock = tiny(ids).logits
    hs = hc.attach(tiny)
    hs.set_scales(scales)
    hs.skip([1])
    with torch.no_grad():
        want = tiny(ids).logits
    hs.save_pretrained(tmp_path / "a")
    hs.unload()
    assert hc.handle_of(tiny) is None
    with torch.no_grad():
        torch.testing.assert_close(tiny(ids).logits, stock, atol=0, rtol=0)
    again = hc.Hopscotch.from_pretrained(tiny, tmp_path / "a")
    assert again.skipped == (1,)
    with torch.no_grad():
        torch.testing.assert_close(tiny(ids).logits, want, atol=0, rtol=0)
    merged = again.merge_and_unload()
    assert hc.handle_of(tiny) is None and hc.handle_of(merged) is None and merged is not tiny
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(tiny(ids).logits, stock, atol=0, rtol=0)  # the original is left as loaded
