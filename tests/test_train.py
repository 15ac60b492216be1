import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from quala import scorer
from quala.config import QualaError
from quala.data import collate
from quala.modeling import QualaForQuestionAnswering
from quala.budget import Front, FrontPoint, write_front
from quala.config import LengthConfig
from quala.train import (CHECKPOINT_MODEL, TrainConfig, Trainer, distill_loss, jitter_ratios, native_bf16,
                         sample_ratios, sample_skipped_layers, scorer_loss, span_loss, to_device, train)


def make_trainer(model_dir, data_dir, tmp_path, stage="finetune", **kw) -> Trainer:
    args = dict(model=str(model_dir), output=str(tmp_path), stage=stage, train_file=str(data_dir / "train.json"),
                dev_file=str(data_dir / "dev.json"), max_seq_length=128, doc_stride=48, batch_size=8, lr=2e-3,
                bf16=False, warmup_ratio=0.0, epochs_finetune=20, epochs_lengthdrop=20, max_steps=12,
                checkpoint_minutes=1e9)
    args.update(kw)
    cfg = TrainConfig(**args)
    return Trainer(cfg, stage, cfg.model, Path(cfg.output))


def fixed_loss(t: Trainer) -> float:
    t.model.eval()
    b = to_device(collate(t.features[:16]), "cpu")
    with torch.no_grad():
        out = t.model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
    t.model.train()
    return span_loss(out.start_logits, out.end_logits, b).item()


@pytest.mark.parametrize("stage", ["finetune", "lengthdrop"])
def test_loss_falls(stage, tiny_model_dir, data_dir, tmp_path):
    t = make_trainer(tiny_model_dir, data_dir, tmp_path, stage)
    before = fixed_loss(t)
    assert t.run()
    assert fixed_loss(t) < before - 0.3


def test_sandwich_runs_full_smallest_and_random_submodels(tiny_model_dir, data_dir, tmp_path):
    t = make_trainer(tiny_model_dir, data_dir, tmp_path, "lengthdrop", num_sandwich=2, layer_dropout_prob=0.0)
    kept = []
    t.model.register_forward_hook(lambda m, i, out: kept.append(out.kept))
    b = to_device(collate(t.features[:8]), "cpu")
    t.train_step(b, list(range(8)))
    lens = b["attention_mask"].sum(1)
    assert len(kept) == 4  # full, smallest, two random
    assert torch.equal(kept[0], lens[:, None].expand(-1, 3))
    smallest = torch.ceil(lens[:, None] * torch.tensor([0.8, 0.64, 0.512]) - 1e-6).long()
    assert torch.equal(kept[1], smallest)
    assert t.used_ratios[0] == pytest.approx(sample_ratios(3, 0.2, None))
    for ratios, k in zip(t.used_ratios[1:], kept[2:]):
        assert all(0.8 * a <= b <= a for a, b in zip((1.0,) + ratios, ratios))
        assert (k >= kept[1]).all() and (k <= kept[0]).all()
    assert t.used_ratios[1] != t.used_ratios[2]


def test_jittered_front_ratios_stay_near_the_point_monotone_and_keep_skips():
    rng = np.random.default_rng(0)
    point = (0.48, 0.43, 0.0, 0.28, 0.2, 0.05)
    for _ in range(200):
        r = jitter_ratios(point, 0.1, rng)
        running = [v for v in r if v > 0]
        assert r[2] == 0.0 and len(running) == 5
        assert all(b <= a for a, b in zip(running, running[1:]))
        assert all(0.01 <= v <= min(1.0, 1.1 * p + 1e-9) for v, p in zip(r, point) if p > 0)
        LengthConfig(r)  # a valid configuration
    assert jitter_ratios((1.0, 1.0, 1.0), 0.0, rng) == (1.0, 1.0, 1.0)
    assert len({jitter_ratios(point, 0.1, rng) for _ in range(20)}) == 20


def write_tiny_front(path: Path, ratios: list[tuple[float, ...]]) -> Path:
    points = [FrontPoint(f"p{i}", LengthConfig(r), 1.0, 1.0, 50.0) for i, r in enumerate(ratios)]
    write_front(path, Front(points))
    return path


@pytest.mark.parametrize("share", [0.0, 1.0])
def test_random_submodels_are_drawn_near_the_front_in_the_share_asked(share, tiny_model_dir, data_dir, tmp_path):
    front = [(0.3, 0.2, 0.1), (0.5, 0.5, 0.05)]  # far below what the uniform bound of 0.2 reaches
    path = write_tiny_front(tmp_path / "length_configs.json", front)
    t = make_trainer(tiny_model_dir, data_dir, tmp_path / "out", "lengthdrop", num_sandwich=6,
                     layer_dropout_prob=0.0, front_sample=str(path), front_share=share, front_jitter=0.1)
    b = to_device(collate(t.features[:8]), "cpu")
    t.train_step(b, list(range(8)))
    assert t.used_ratios[0] == pytest.approx(sample_ratios(3, 0.2, None))  # the smallest stays the sandwich's
    near = [any(all(0.9 * p - 1e-9 <= v <= 1.1 * p + 1e-9 for v, p in zip(r, point)) for point in front)
            for r in t.used_ratios[1:]]
    uniform = [all(0.8 * a <= b <= a for a, b in zip((1.0,) + r, r)) for r in t.used_ratios[1:]]
    assert all(near) if share == 1.0 else (all(uniform) and not any(near))


def test_front_sample_without_a_usable_configuration_is_a_clear_error(tiny_model_dir, data_dir, tmp_path):
    path = write_tiny_front(tmp_path / "length_configs.json", [(0.5, 0.4, 0.3, 0.2)])  # 4 layers, the model has 3
    with pytest.raises(QualaError, match="no ratio configuration of 3 layers"):
        make_trainer(tiny_model_dir, data_dir, tmp_path / "out", "lengthdrop", front_sample=str(path))


@pytest.mark.parametrize("flags, native", [({"avx2"}, False), ({"avx2", "avx512_vnni"}, False),
                                           ({"avx512_bf16"}, True), ({"amx_bf16", "amx_int8"}, True)])
def test_bf16_autocast_by_default_only_where_the_cpu_computes_it(flags, native, monkeypatch, tiny_model_dir,
                                                                 data_dir, tmp_path):
    monkeypatch.setattr("quala.train.cpu_flags", lambda: frozenset(flags))
    assert native_bf16(torch.device("cpu")) is native
    assert make_trainer(tiny_model_dir, data_dir, tmp_path, bf16=None).bf16 is native
    assert make_trainer(tiny_model_dir, data_dir, tmp_path, bf16=True).bf16  # asked for: kept
    assert not make_trainer(tiny_model_dir, data_dir, tmp_path, bf16=False).bf16


def test_inplace_distillation_is_zero_for_the_same_model(tiny_model_dir):
    model = QualaForQuestionAnswering.from_pretrained(tiny_model_dir)
    ids = torch.randint(1000, 2000, (2, 30))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    full = model(ids, mask)
    same = model(ids, mask, length_config=__import__("quala.config").config.LengthConfig((1.0, 1.0, 1.0)))
    assert distill_loss(same.start_logits, same.end_logits, full.start_logits, full.end_logits, mask).item() \
        == pytest.approx(0.0, abs=1e-6)
    other = torch.randn_like(full.start_logits)
    assert distill_loss(other, other, full.start_logits, full.end_logits, mask).item() > 0.1


def test_resume_continues_exactly(tiny_model_dir, data_dir, tmp_path):
    straight = make_trainer(tiny_model_dir, data_dir, tmp_path / "a", "lengthdrop", max_steps=6)
    straight.run()
    first = make_trainer(tiny_model_dir, data_dir, tmp_path / "b", "lengthdrop", max_steps=6, stop_after_steps=3)
    assert not first.run()
    resumed = make_trainer(tiny_model_dir, data_dir, tmp_path / "b", "lengthdrop", max_steps=6, resume=True)
    assert resumed.step == 0
    resumed.run()
    assert resumed.step == 6
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_each_checkpoint_is_also_a_model_directory_of_the_weights_so_far(tiny_model_dir, data_dir, tmp_path):
    """A run stopped after 3 steps: OUT/checkpoint loads as a model with exactly the trained weights."""
    first = make_trainer(tiny_model_dir, data_dir, tmp_path, "lengthdrop", max_steps=6, stop_after_steps=3)
    assert not first.run()
    saved = QualaForQuestionAnswering.from_pretrained(tmp_path / CHECKPOINT_MODEL)
    assert saved.config.extra["steps"] == 3 and saved.config.extra["stage"] == "lengthdrop"
    assert saved.config.extra["checkpoint_of"] == str(tmp_path)
    trained = first.model.state_dict()
    for name, value in saved.state_dict().items():
        assert torch.equal(value, trained[name]), name
    assert not torch.equal(saved.state_dict()["qa_outputs.weight"],
                           QualaForQuestionAnswering.from_pretrained(tiny_model_dir).state_dict()["qa_outputs.weight"])
    assert (tmp_path / CHECKPOINT_MODEL / "tokenizer.json").is_file()


def test_attention_dropout_is_set_on_every_layer_and_saved(tiny_model_dir, data_dir, tmp_path):
    t = make_trainer(tiny_model_dir, data_dir, tmp_path, "lengthdrop", max_steps=2, attention_dropout=0.0,
                     eval_limit=2)
    assert [layer.attn_dropout.p for layer in t.model.layers] == [0.0] * len(t.model.layers)
    t.run()
    t.finish()
    assert QualaForQuestionAnswering.from_pretrained(tmp_path).config.attention_probs_dropout_prob == 0.0
    default = make_trainer(tiny_model_dir, data_dir, tmp_path / "d", "lengthdrop")
    assert {layer.attn_dropout.p for layer in default.model.layers} == {0.1}
    with pytest.raises(QualaError, match=r"attention dropout 1.0: a probability in \[0, 1\)"):
        make_trainer(tiny_model_dir, data_dir, tmp_path / "e", "lengthdrop", attention_dropout=1.0)


def test_resume_with_fewer_max_steps_ends_the_schedule_sooner(tiny_model_dir, data_dir, tmp_path):
    """A run that must end sooner: --resume --max-steps N decays the learning rate to zero at step N."""
    first = make_trainer(tiny_model_dir, data_dir, tmp_path, "lengthdrop", max_steps=10, stop_after_steps=3)
    assert not first.run()
    shorter = make_trainer(tiny_model_dir, data_dir, tmp_path, "lengthdrop", max_steps=5, resume=True)
    shorter.run()
    assert shorter.step == 5 and shorter.scheduler.get_last_lr()[0] == 0.0


def test_teacher_pulls_student_toward_its_logits(tiny_model_dir, data_dir, tmp_path, tokenizer):
    from tests.conftest import tiny_config
    torch.manual_seed(1)
    teacher_dir = tmp_path / "teacher"
    QualaForQuestionAnswering(tiny_config()).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(str(teacher_dir))
    t = make_trainer(tiny_model_dir, data_dir, tmp_path / "s", teacher=str(teacher_dir), alpha=1.0, temperature=1.0)

    def gap() -> float:
        b = to_device(collate(t.features[:16]), "cpu")
        with torch.no_grad():
            t.model.eval()
            out = t.model(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            t.model.train()
        n = b["input_ids"].shape[1]
        tl = torch.from_numpy(t.teacher_logits[:16, :, :n].astype("float32"))
        return distill_loss(out.start_logits, out.end_logits, tl[:, 0], tl[:, 1], b["attention_mask"]).item()

    before = gap()
    t.run()
    assert gap() < before * 0.5
    assert list((tmp_path / "s").glob("teacher_logits_*.npy"))  # cached for the next run


def test_train_command_writes_loadable_models(tiny_model_dir, data_dir, tmp_path):
    final = train(TrainConfig(model=str(tiny_model_dir), output=str(tmp_path), stage="both",
                              train_file=str(data_dir / "train.json"), dev_file=str(data_dir / "dev.json"),
                              max_seq_length=128, doc_stride=48, batch_size=8, max_steps=2, eval_limit=6))
    assert final == tmp_path / "lengthdrop"
    for stage in ("finetune", "lengthdrop"):
        QualaForQuestionAnswering.from_pretrained(tmp_path / stage)
        assert (tmp_path / stage / "log.jsonl").read_text().count("\n") >= 2


# ---- the losses, pinned by hand -----------------------------------------------------------------------------------
def test_distillation_is_kl_from_the_target_to_the_student_by_hand():
    """KL(target || student), mean over rows, start and end averaged, times T^2. Row 0: target softmax (0.8, 0.1,
    0.1), student uniform: KL = 0.8 ln 2.4 + 0.2 ln 0.3 = 0.4596 (the other direction would be 0.5108). Row 1: both
    uniform, KL 0 either way (so the rows cannot trade directions). Padding (column 3) carries huge logits that must
    not count; the end logits agree, so their KL is 0."""
    big = math.log(8.0)
    student = torch.tensor([[0.0, 0.0, 0.0, 50.0], [0.0, 0.0, 0.0, 50.0]])
    target = torch.tensor([[big, 0.0, 0.0, -50.0], [0.0, 0.0, 0.0, -50.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0]])
    start_kl = (0.8 * math.log(2.4) + 0.2 * math.log(0.3)) / 2
    loss = distill_loss(student, student.clone(), target, student.clone(), mask)
    assert loss.item() == pytest.approx(start_kl / 2, rel=1e-5)
    assert start_kl / 2 == pytest.approx(0.1149, abs=1e-4)  # KL(student || target) would be 0.1277
    # temperature: both distributions softened by T, the loss scaled by T^2
    t = 2.0
    q = np.exp([big / t, 0, 0]) / np.exp([big / t, 0, 0]).sum()
    by_hand = np.sum(q * np.log(q * 3)) / 2 / 2 * t ** 2
    assert distill_loss(student, student, target, student, mask, t).item() == pytest.approx(by_hand, rel=1e-5)
    student = student.clone().requires_grad_()
    distill_loss(student, student, target, student, mask).backward()
    assert target.grad is None and student.grad.abs().sum() > 0  # the target is a fixed distribution


def test_span_loss_by_hand():
    """Cross-entropy of the gold start and end over the real tokens only, start and end averaged."""
    start = torch.tensor([[0.0, math.log(3.0), 0.0, 40.0]])
    end = torch.tensor([[0.0, 0.0, 0.0, 40.0]])
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 0]]), "start_positions": torch.tensor([1]),
             "end_positions": torch.tensor([2])}
    assert span_loss(start, end, batch).item() == pytest.approx((-math.log(3 / 5) - math.log(1 / 3)) / 2, rel=1e-5)


# ---- LayerDrop ----------------------------------------------------------------------------------------------------
def test_layerdrop_skips_the_sampled_layers_of_the_random_submodels(tiny_model_dir, data_dir, tmp_path):
    """With LayerDrop on, each random sub-model skips the layers the sampler draws (replayed here from the same
    seed): they do not run, and pass their tokens on unchanged; the full and the smallest model skip nothing."""
    t = make_trainer(tiny_model_dir, data_dir, tmp_path, "lengthdrop", num_sandwich=2, layer_dropout_prob=0.5)
    calls, kept = [], []
    for i, layer in enumerate(t.model.layers):
        layer.register_forward_hook(lambda m, inp, out, i=i: calls[-1].add(i))
    t.model.register_forward_pre_hook(lambda m, inp: calls.append(set()))
    t.model.register_forward_hook(lambda m, inp, out: kept.append(out.kept))
    rng = np.random.default_rng(t.cfg.seed + 1)
    expected = []
    b = to_device(collate(t.features[:8]), "cpu")
    lens = b["attention_mask"].sum(1)
    for _ in range(3):
        t.train_step(b, list(range(8)))
        expected += [frozenset(), frozenset()]  # the full model, the smallest sub-model
        for _ in range(2):
            ratios = sample_ratios(3, 0.2, rng)
            expected.append(sample_skipped_layers(3, 0.5, rng))
    assert [set(range(3)) - c for c in calls] == [set(s) for s in expected]
    assert any(expected)
    for skipped, k in zip(expected, kept):
        for layer in skipped:
            previous = lens if layer == 0 else k[:, layer - 1]
            assert torch.equal(k[:, layer], previous)  # a skipped layer keeps what it received
    assert ratios == pytest.approx(t.used_ratios[-1])  # the replayed sampler is the trainer's


def test_skipped_layers_are_drawn_with_the_probability_and_never_all():
    rng = np.random.default_rng(0)
    draws = [sample_skipped_layers(4, 0.3, rng) for _ in range(4000)]
    assert all(len(d) < 4 for d in draws) and any(len(d) == 3 for d in draws)
    for layer in range(4):
        assert sum(layer in d for d in draws) / len(draws) == pytest.approx(0.3, abs=0.03)
    assert sample_skipped_layers(4, 0.0, rng) == frozenset()
    assert sample_skipped_layers(2, 1.0, rng) == frozenset()  # every layer drawn: nothing is skipped


# ---- checkpoints --------------------------------------------------------------------------------------------------
def test_corrupted_or_wrong_stage_checkpoint_is_a_clear_error(tiny_model_dir, data_dir, tmp_path):
    first = make_trainer(tiny_model_dir, data_dir, tmp_path, "finetune", max_steps=4, stop_after_steps=1)
    assert not first.run()
    with pytest.raises(QualaError, match=r"checkpoint\.pt: a checkpoint of stage 'finetune', not 'lengthdrop'"):
        make_trainer(tiny_model_dir, data_dir, tmp_path, "lengthdrop", resume=True).run()
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(QualaError, match=r"checkpoint\.pt: cannot read the checkpoint"):
        make_trainer(tiny_model_dir, data_dir, tmp_path, "finetune", resume=True).run()


class NotHandled(Exception):
    pass


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(tiny_model_dir, data_dir, tmp_path):
    """A real SIGTERM at the start of step 4 of 6: the checkpoint holds 3 steps, and --resume ends where an
    uninterrupted run ends."""
    kw = dict(model=str(tiny_model_dir), stage="lengthdrop", train_file=str(data_dir / "train.json"),
              dev_file=str(data_dir / "dev.json"), max_seq_length=128, doc_stride=48, batch_size=8, lr=2e-3,
              bf16=False, warmup_ratio=0.0, epochs_lengthdrop=20, max_steps=6, checkpoint_minutes=1e9, eval_limit=2,
              eval_length_configs=["0.5,0.5,0.5"])
    straight = train(TrainConfig(output=str(tmp_path / "a"), **kw))
    forwards = []

    def terminate_at_step_4(module, inputs):
        if isinstance(module, QualaForQuestionAnswering) and module.training:
            forwards.append(1)
            if len(forwards) == 3 * 4 + 1:  # lengthdrop: full + smallest + 2 random forwards per step
                os.kill(os.getpid(), signal.SIGTERM)

    def not_handled(*_):
        raise NotHandled("quala.train did not install its SIGTERM handler")

    previous = signal.signal(signal.SIGTERM, not_handled)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(terminate_at_step_4)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(output=str(tmp_path / "b"), **kw))
    finally:
        hook.remove()
        signal.signal(signal.SIGTERM, previous)
    state = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and state["stage"] == "lengthdrop"
    assert not (tmp_path / "b" / "train_done.json").exists()
    try:
        resumed = train(TrainConfig(output=str(tmp_path / "b"), resume=True, **kw))
    finally:
        signal.signal(signal.SIGTERM, previous)
    a, b = (QualaForQuestionAnswering.from_pretrained(d).state_dict() for d in (straight, resumed))
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    assert '"steps": 6' in (tmp_path / "b" / "train_done.json").read_text()


# ---- the learned ranking ------------------------------------------------------------------------------------------
def learned_model_dir(tiny_model_dir, tmp_path) -> Path:
    import shutil

    from quala.modeling import load
    from tests.test_scorer import random_scorers
    d = tmp_path / "learned"
    shutil.copytree(tiny_model_dir, d)
    model, _ = load(d)
    model.config.ranking = "learned"
    from quala.modeling import attach_scorers
    attach_scorers(model, random_scorers(model, seed=3)).save_pretrained(d)
    return d


def test_lengthdrop_with_the_learned_ranking_ranks_by_fixed_scorers_and_refits_them_on_request(
        tiny_model_dir, data_dir, tmp_path, monkeypatch):
    """Sub-models rank by the scorers (they run in every sub-model), the scorers stay as fitted while the encoder
    trains, and with refit_scorers the saved model carries scorers fitted again on its *final* weights, over
    features spread across the whole training set."""
    from quala import scorer
    t = make_trainer(learned_model_dir(tiny_model_dir, tmp_path), data_dir, tmp_path / "out", "lengthdrop",
                     max_steps=4, eval_limit=4, layer_dropout_prob=0.0, refit_scorers=True)
    initial = QualaForQuestionAnswering.from_pretrained(tmp_path / "learned")
    before = [layer.scorer.weight.detach().clone() for layer in t.model.layers]
    calls = []
    t.model.layers[1].scorer.register_forward_hook(lambda m, inp, out: calls.append(out.shape))
    trained = t.model.layers[1].ffn_in.weight.detach().clone()
    assert t.run()
    assert len(calls) == 4 * 3  # every step: the smallest and two random sub-models rank with it
    assert not torch.equal(trained, t.model.layers[1].ffn_in.weight)
    assert all(torch.equal(b, layer.scorer.weight) for b, layer in zip(before, t.model.layers))
    fitted_on = []
    real_fit = scorer.fit
    monkeypatch.setattr(scorer, "fit", lambda model, features: fitted_on.append(features) or real_fit(model, features))
    t.finish()
    (features,) = fitted_on
    assert len(features) == min(2000, len(t.features)) and features[0] is t.features[0]
    assert features[-1].example_index >= t.features[-1].example_index * 0.9  # spread to the end of the set
    saved = QualaForQuestionAnswering.from_pretrained(tmp_path / "out")
    assert saved.config.ranking == "learned"
    on_final, on_initial = real_fit(saved, features), real_fit(initial, features)
    for layer, final, first in zip(saved.layers, on_final, on_initial):
        assert torch.allclose(layer.scorer.weight, final.weight, atol=1e-5)
        assert not torch.allclose(layer.scorer.weight, first.weight, atol=1e-3)


@pytest.mark.parametrize("stage,refit,refits", [("lengthdrop", None, False), ("finetune", None, True),
                                                ("finetune", False, False)])
def test_the_scorers_are_refitted_after_fine_tuning_and_kept_after_lengthdrop_by_default(
        tiny_model_dir, data_dir, tmp_path, monkeypatch, stage, refit, refits):
    """LengthDrop's sub-models learned to work with the scorers they ranked by: by default the saved model keeps
    them. Fine-tuning ran at full length only, where the scorers played no part: they are fitted again."""
    from quala import scorer
    t = make_trainer(learned_model_dir(tiny_model_dir, tmp_path), data_dir, tmp_path / "out", stage,
                     max_steps=2, eval_limit=2, layer_dropout_prob=0.0, refit_scorers=refit,
                     eval_length_configs=["0.5,0.5,0.5"])
    before = [layer.scorer.weight.detach().clone() for layer in t.model.layers]
    fitted = []
    real_fit = scorer.fit
    monkeypatch.setattr(scorer, "fit", lambda model, features: fitted.append(1) or real_fit(model, features))
    assert t.run()
    t.finish()
    saved = QualaForQuestionAnswering.from_pretrained(tmp_path / "out")
    assert len(fitted) == int(refits)
    kept = all(torch.equal(b, layer.scorer.weight) for b, layer in zip(before, saved.layers))
    assert kept != refits


def fixed_scorer_loss(t: Trainer) -> float:
    t.model.eval()
    b = to_device(collate(t.features[:16]), "cpu")
    with torch.no_grad():
        out = t.model(b["input_ids"], b["attention_mask"], b["token_type_ids"], return_scores=True)
    t.model.train()
    return scorer_loss(out.scores, out.start_logits, out.end_logits, b).item()


def test_scorer_loss_trains_the_scorers_with_the_model_and_is_logged(tiny_model_dir, data_dir, tmp_path):
    """--scorer-loss: the scorers take gradient steps toward their targets (the error on a fixed batch falls), the
    encoder moves too, and the log records the error."""
    t = make_trainer(learned_model_dir(tiny_model_dir, tmp_path), data_dir, tmp_path / "out", "lengthdrop",
                     max_steps=10, scorer_loss=1.0, layer_dropout_prob=0.0, log_every=5, lr=1e-2)
    before, scorer_weight = fixed_scorer_loss(t), t.model.layers[0].scorer.weight.detach().clone()
    assert t.run()
    assert fixed_scorer_loss(t) < 0.5 * before
    assert not torch.equal(scorer_weight, t.model.layers[0].scorer.weight)
    logged = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "scorer_loss" in r] == [5, 10]


def test_scorer_loss_reaches_the_encoder_through_what_the_scorers_read(tiny_model_dir, data_dir, tmp_path):
    t = make_trainer(learned_model_dir(tiny_model_dir, tmp_path), data_dir, tmp_path / "out", "lengthdrop",
                     scorer_loss=1.0)
    b = to_device(collate(t.features[:4]), "cpu")
    out = t.model(b["input_ids"], b["attention_mask"], b["token_type_ids"], return_scores=True)
    scorer_loss(out.scores, out.start_logits, out.end_logits, b).backward()
    assert t.model.layers[0].scorer.weight.grad.abs().sum() > 0
    assert t.model.layers[0].query.weight.grad.abs().sum() > 0 and t.model.embed.word.weight.grad.abs().sum() > 0
    assert t.model.layers[-1].ffn_out.weight.grad is None  # the last layer's output feeds no scorer
    assert t.model.qa_outputs.weight.grad is None  # the targets are detached


def test_scorer_loss_by_hand_counts_real_tokens_only():
    start = torch.tensor([[0.0, 3.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = {"attention_mask": mask, "context": torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]).bool()}
    target = scorer.answer_targets(start, start, mask.bool(), batch["context"])
    off = target + torch.where(mask.bool(), 1.0, 100.0)  # padding far off: never counted
    assert scorer_loss((target, target), start, start, batch).item() == pytest.approx(0.0, abs=1e-12)
    assert scorer_loss((target, off), start, start, batch).item() == pytest.approx(0.5)


def test_scorer_loss_needs_learned_scorers_and_the_same_weight_on_resume(tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(QualaError, match="--scorer-loss 0.5: .* does not rank tokens with learned scorers"):
        make_trainer(tiny_model_dir, data_dir, tmp_path / "a", "lengthdrop", scorer_loss=0.5)
    learned = learned_model_dir(tiny_model_dir, tmp_path)
    first = make_trainer(learned, data_dir, tmp_path / "b", "lengthdrop", max_steps=4, stop_after_steps=1)
    assert not first.run()
    with pytest.raises(QualaError, match=r"optimizer trained other parameters \(resume with the --scorer-loss it "
                                         r"was started with, 0.0\)"):
        make_trainer(learned, data_dir, tmp_path / "b", "lengthdrop", scorer_loss=0.5, resume=True).run()
