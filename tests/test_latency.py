"""benchmarks/latency.py end to end on a tiny model: every row timed, ratios and the JSON written."""
import json
from tests.conftest import load_script

latency = load_script("benchmarks/latency.py")


def test_latency_table_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "latency.json"
    assert latency.main(["--model", str(tiny_model_dir), "--features", "3", "--repeats", "1", "--no-static",
                         "--length-configs", "1,0.5,0.3", "--eval-limit", "2", "--pad-to", "128",
                         "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["rows"]}
    base = rows["BERT-base fp32 PyTorch (random init)"]
    assert base["b1_speedup"] == 1.0 and base["b1_ms"] > 0
    plain = "MiniLM full, ORT quantize_dynamic (plain HF export)"
    assert plain in rows and any("SkipLayerNormFusion off" in name for name in rows)
    assert any("micro-batches of" in name for name in rows)
    assert rows["quala INT8 ORT, one run per batch (no micro-batches)"]["b32_ms"] > 0
    assert rows["quala INT8 ORT, 1,0.5,0.3"]["b32_ms"] > 0 and 0 <= rows["quala INT8 ORT"]["f1"] <= 100
    assert any("side by side (quala's runtime setting)" in name for name in rows)
    point, full = rows["quala INT8 ORT, 1,0.5,0.3"], rows["quala INT8 ORT"]
    # the table's ms (2 decimals) and GMACs (3) are rounded: the ratio lies between its extremes over that rounding
    ms, gmacs = (full["b32_ms"], point["b32_ms"]), (full["gmac_per_feature"], point["gmac_per_feature"])
    follows = [(ms[0] + a) / (ms[1] - a) / ((gmacs[0] - b) / (gmacs[1] + b)) for a, b in ((-5e-3, -5e-4), (5e-3, 5e-4))]
    assert follows[0] - 0.005 <= point["b32_time_per_macs"] <= follows[1] + 0.005 and "b32_time_per_macs" not in full
    serial = rows["quala INT8 ORT, micro-batches one after another, 1,0.5,0.3"]
    assert serial["b32_ms"] > 0 and serial["b32_time_per_macs"] > 0
    assert "| BERT-base fp32 PyTorch (random init) |" in capsys.readouterr().out
    padded = {r["name"]: r for r in result["padded_rows"]}  # the original work's protocol: 128 tokens, counts
    assert set(padded) == {"BERT-base fp32 PyTorch (random init)", plain, "quala INT8 ORT", "quala INT8 ORT, 1,0.5,0.3"}
    assert padded["quala INT8 ORT, 1,0.5,0.3"]["length_config"] == "tokens:128,64,38"
    assert padded["quala INT8 ORT"]["gmac_per_feature"] > rows["quala INT8 ORT"]["gmac_per_feature"]
    assert all(r["b1_ms"] > 0 and "f1" not in r for r in padded.values())


def test_padded_features_count_every_token(tiny_model_dir, dev_examples, tokenizer):
    from quala.data import collate, make_features
    features = make_features(dev_examples[:2], tokenizer, 128, 48)[:2]
    batch = collate(latency.padded(features, 128))
    assert batch["input_ids"].shape == (2, 128) and batch["attention_mask"].all()
    assert (batch["input_ids"][0, : len(features[0])] == features[0].input_ids).all()


def test_latency_names_a_missing_model(tmp_path, capsys):
    assert latency.main(["--model", str(tmp_path / "nope"), "--json", str(tmp_path / "l.json")]) == 2
    assert "nope" in capsys.readouterr().err


def test_spread_takes_windows_evenly_from_first_to_last():
    windows = list(range(100))
    assert latency.spread(windows, 5) == [0, 25, 50, 74, 99]
    assert latency.spread(windows, 1) == [0] and latency.spread(windows[:3], 8) == [0, 1, 2]
    assert len(set(latency.spread(windows, 64))) == 64
