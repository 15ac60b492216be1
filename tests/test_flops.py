import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import tiny_config
from quala.config import LengthConfig
from quala.flops import forward_macs, layer_tokens, mean_gmacs, speedup
from quala.modeling import ModelConfig, QualaForQuestionAnswering


def counted_macs(model, n: int, length_config) -> int:
    ids = torch.randint(1000, 2000, (1, n))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(ids, torch.ones_like(ids), torch.zeros_like(ids), length_config)
    return counter.get_total_flops() // 2  # FlopCounterMode counts a multiply-accumulate as 2 FLOPs


@pytest.mark.parametrize("lc", [None, "1,1,1", "0.9,0.6,0.4", "0.5,0.5,0.05", "tokens:100,60,7", "1,0.3,0.3",
                                "1,0,1", "0,0.5,0.3", "0.6,0.4,0"])
@pytest.mark.parametrize("n", [128, 77, 9])
def test_cost_model_matches_flop_counter(lc, n):
    torch.manual_seed(0)
    model = QualaForQuestionAnswering(tiny_config()).eval()
    length_config = LengthConfig.parse(lc)
    assert forward_macs(model.config, length_config, n) == counted_macs(model, n, length_config)


def test_layers_attend_over_received_tokens_and_feed_forward_over_kept():
    assert layer_tokens(LengthConfig.parse("0.5,0.25"), 100, 2) == [(100, 50), (50, 25)]
    assert layer_tokens(None, 100, 2) == [(100, 100), (100, 100)]
    assert layer_tokens(LengthConfig.parse("tokens:300,200"), 100, 2) == [(100, 100), (100, 100)]  # capped at n
    # a skipped layer costs nothing and passes on what it received
    assert layer_tokens(LengthConfig.parse("0.5,0,0.25"), 100, 3) == [(100, 50), (0, 0), (50, 25)]
    assert layer_tokens(LengthConfig.parse("0,0.5"), 100, 2) == [(0, 0), (100, 50)]


def test_bert_base_at_384_tokens_is_the_papers_35_gmacs():
    bert_base = ModelConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    assert forward_macs(bert_base, None, 384) / 1e9 == pytest.approx(35.3, abs=0.05)


def test_mean_over_features_and_speedup():
    c = tiny_config()
    lc = LengthConfig.parse("0.5,0.5,0.5")
    lengths = [128, 64, 64, 9]
    expected = sum(forward_macs(c, lc, n) for n in lengths) / len(lengths) / 1e9
    assert mean_gmacs(c, lc, lengths) == pytest.approx(expected, rel=1e-12)
    assert speedup(c, lc, lengths) > 1.5 and speedup(c, None, lengths) == 1.0


def test_cli_prices_real_lengths_and_windows_padded_as_the_original_work_timed(tiny_model_dir, capsys):
    from quala.flops import main
    main(["--model", str(tiny_model_dir), "--length-config", "tokens:100,60,20", "--limit", "20"])
    out = capsys.readouterr().out.splitlines()
    real, padded = out[2], out[3]
    assert "[tokens:100,60,20] on" in real and "dev features" in real
    assert padded.startswith("real tokens per feature: mean ") and "padded to 128:" in padded
    # fixed token counts cut a window padded to 128 tokens by more than the same counts cut the real lengths
    assert float(padded.split(", ")[-1].split("x")[0]) > float(real.split(", ")[-1].split("x")[0]) > 1.0


def test_mean_of_one_or_no_feature_and_the_cli_reference_lines(capsys):
    from quala.flops import main
    c = tiny_config()
    assert mean_gmacs(c, None, []) == 0.0
    assert mean_gmacs(c, None, [7]) == pytest.approx(forward_macs(c, None, 7) / 1e9, rel=1e-12)
    main([])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "BERT-base       384 tokens: 35.33 GMACs (70.67 GFLOPs as 2*MACs)"
    assert out[1] == "MiniLM-L6-H384  384 tokens: 4.76 GMACs (9.51 GFLOPs as 2*MACs)"
