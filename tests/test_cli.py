"""`hopscotch info | ask | export` on a tiny model directory."""

from __future__ import annotations

import json

import hopscotch_core as hc
from hopscotch_core import cli


def test_info_prints_the_summary(tiny_dir, capsys):
    assert cli.main(["info", "--model", str(tiny_dir), "--device", "cpu"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "llama" and info["layers"] == 4 and info["kv_heads"] == 2
    assert 0 < info["attention_parameter_share"] < 1 and info["removed_attention_blocks"] == []


def test_ask_shows_original_and_skipped(tiny_dir, capsys):
    assert cli.main(["ask", "--model", str(tiny_dir), "--device", "cpu", "--skip", "1,2", "--prompt", "hi",
                     "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "--- original" in out and "--- skipped [1, 2]" in out
    assert cli.main(["ask", "--model", str(tiny_dir), "--skip", "9", "--prompt", "hi"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_export_writes_a_reloadable_compact_model(tiny_dir, tmp_path, capsys):
    out = tmp_path / "small"
    assert cli.main(["export", "--model", str(tiny_dir), "--device", "cpu", "--skip", "0,3", "--out", str(out)]) == 0
    assert "fewer" in capsys.readouterr().out
    small, tok = hc.load_model(out, device="cpu")
    assert hc.compact_info(small).skipped == (0, 3) and tok is not None
    assert cli.main(["ask", "--model", str(out), "--prompt", "hi", "--max-new-tokens", "3"]) == 0
    assert "compact model" in capsys.readouterr().out
    assert cli.main(["export", "--model", str(tiny_dir), "--out", str(tmp_path / "x")]) == 2
    assert "nothing to export" in capsys.readouterr().err
