from pathlib import Path

import pytest
import torch

from quala.data import collate
from quala.modeling import QualaForQuestionAnswering
from quala.train import TrainConfig, Trainer, distill_loss, sample_ratios, span_loss, train


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
    b = collate(t.features[:16])
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
    b = collate(t.features[:8])
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
        b = collate(t.features[:16])
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
