"""checkpoint.write_checkpoint: the folder save_pretrained writes, streamed tensor by tensor.

The reference is transformers' own save_pretrained of the same model: same tensor names and bytes, same config,
and stock from_pretrained loads the streamed folder with the same logits."""

from __future__ import annotations

import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file

from hopscotch_core.engine.checkpoint import write_checkpoint

from helpers.models import FAMILIES, make_model


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("tied", [False, True])
def test_streamed_checkpoint_equals_save_pretrained(fam, tied, tmp_path, ids):
    model = make_model(fam, tie_word_embeddings=tied)
    model.save_pretrained(tmp_path / "ref")
    (tmp_path / "got").mkdir()
    old = os.umask(0o022)
    try:
        write_checkpoint(model, tmp_path / "got")
    finally:
        os.umask(old)
    ref, got = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "got" / "model.safetensors")
    assert list(got) == list(ref) or sorted(got) == sorted(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
    for name in ("config.json", "generation_config.json"):
        assert json.loads((tmp_path / "got" / name).read_text()) == json.loads((tmp_path / "ref" / name).read_text())
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "got").iterdir()} == {
        "config.json": 0o644, "generation_config.json": 0o644, "model.safetensors": 0o644}
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "got").eval()
    with torch.no_grad():
        assert torch.equal(stock(ids).logits, model(ids).logits)


def test_bf16_and_non_contiguous_tensors_keep_their_bytes(tmp_path):
    model = make_model("llama", dtype=torch.bfloat16)
    with torch.no_grad():  # a transposed (non-contiguous) weight is written in its logical layout
        w = model.model.layers[0].mlp.up_proj.weight
        model.model.layers[0].mlp.up_proj.weight = torch.nn.Parameter(w.t().contiguous().t(), requires_grad=False)
    write_checkpoint(model, tmp_path)
    got = load_file(tmp_path / "model.safetensors")
    for k, v in model.state_dict().items():
        assert got[k].dtype == torch.bfloat16 and torch.equal(got[k], v), k
