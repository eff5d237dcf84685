"""The fine-tuning stage: LoRA and full fine-tuning on tiny models and real text, with and without a teacher."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainingArguments

import slimlm
from conftest import save_tiny_model
from slimlm.cli import main
from slimlm.data.corpus import prepare_data
from slimlm.data.instructions import IGNORE_INDEX, encode, prepare_instructions, to_example
from slimlm.methods.layers import decoder_layers
from slimlm.methods.lora import add_lora, target_modules, trainable_parameters
from slimlm.sources import load_model

FAST = dict(block_size=32, batch_size=4, bf16=False, logging_steps=1, eval_tokens=256, eval_window=32)
PROJECTIONS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>\n{% endif %}"
)


def lora_parameter_count(model, targets: list[str], rank: int) -> int:
    """r·(d_in + d_out) summed over the targeted Linears of the decoder layers: what LoRA should add."""
    count = 0
    for layer in decoder_layers(model):
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                count += rank * (module.in_features + module.out_features)
    return count


def weights(path):
    return load_file(str(Path(path) / "model.safetensors"))


def held_out_blocks(text_dir, tokenizer, n=8):
    test = prepare_data(str(text_dir), tokenizer, 32).test
    return test[: (len(test) // 32) * 32].view(-1, 32)[:n]


def kl_to_teacher(teacher, student, blocks):
    """Mean per-token KL(teacher || student) on held-out blocks, in float64."""
    with torch.no_grad():
        t = torch.log_softmax(teacher(input_ids=blocks).logits.double(), -1)
        s = torch.log_softmax(student(input_ids=blocks).logits.double(), -1)
    return (t.exp() * (t - s)).sum(-1).mean().item()


def write_jsonl(path, records):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


@pytest.fixture
def instructions(speeches, tmp_path):
    records = [{"prompt": f"Summarise part {i}: {s[:60]}", "response": s[60:140]} for i, s in enumerate(speeches[:30])]
    return write_jsonl(tmp_path / "inst.jsonl", records)


# ------------------------------------------------------------------------------------------ which weights train


@pytest.mark.parametrize("requested,rank", [(None, 4), ("q_proj,v_proj", 2)])
def test_lora_trainable_count_is_r_times_din_plus_dout(tiny_teacher, requested, rank):
    model, _, _ = load_model(tiny_teacher)
    targets = target_modules(model, requested)
    assert targets == (PROJECTIONS if requested is None else ["q_proj", "v_proj"])
    expected = sum(
        rank * (m.in_features + m.out_features)
        for layer in model.model.layers
        for name, m in layer.named_modules()
        if name.rsplit(".", 1)[-1] in targets
    )
    assert lora_parameter_count(model, targets, rank) == expected
    peft_model = add_lora(model, rank=rank, lora_alpha=8, dropout=0.0, targets=targets)
    assert trainable_parameters(peft_model)["trainable"] == expected


def test_lora_merges_exactly_and_round_trips_through_peft(tiny_teacher, text_dir):
    from peft import PeftModel

    out = slimlm.finetune(
        model=str(tiny_teacher),
        data=str(text_dir),
        out="lora",
        method="lora",
        rank=4,
        lora_alpha=8,
        dropout=0.0,
        max_steps=3,
        learning_rate=1e-2,
        **FAST,
    )
    record = json.loads((out / "slimlm.json").read_text())
    base, _, _ = load_model(tiny_teacher)
    targets = record["method"]["target_modules"]
    assert targets == PROJECTIONS
    assert record["cost"]["trainable_parameters"] == lora_parameter_count(base, targets, 4)
    for key in ("trainable_percent", "optimizer_state_bytes", "peak_memory_mib", "train_tokens_per_s"):
        assert record["cost"][key] > 0, key
    # AdamW: 2 fp32 moments
    assert record["cost"]["optimizer_state_bytes"] >= 8 * record["cost"]["trainable_parameters"]

    merged = AutoModelForCausalLM.from_pretrained(out)
    adapter = PeftModel.from_pretrained(load_model(tiny_teacher)[0], str(out / "adapter")).eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        # fp32 on both sides; the merge changes only the order of the additions: W x + s B A x vs (W + s B A) x
        torch.testing.assert_close(merged(input_ids=ids).logits, adapter(input_ids=ids).logits, rtol=0, atol=1e-5)

    # no base weight moved: merged = original + (lora_alpha / r) B A on targeted weights, equal elsewhere
    original, new = weights(tiny_teacher), weights(out)
    lora = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    changed = 0
    for key, w in original.items():
        a_key = "base_model.model." + key.replace(".weight", ".lora_A.weight")
        if a_key in lora:
            delta = (8 / 4) * lora[a_key.replace("lora_A", "lora_B")] @ lora[a_key]
            torch.testing.assert_close(new[key], w + delta, rtol=0, atol=1e-6, msg=key)
            changed += int(not torch.equal(new[key], w))
        else:
            assert torch.equal(new[key], w), key
    assert changed == 7 * base.config.num_hidden_layers


def test_full_finetuning_changes_every_trained_weight(tiny_teacher, text_dir):
    out = slimlm.finetune(
        model=str(tiny_teacher), data=str(text_dir), out="full", method="full", max_steps=2, learning_rate=1e-3, **FAST
    )
    original, new = weights(tiny_teacher), weights(out)
    assert original.keys() == new.keys()
    unchanged = [key for key in original if torch.equal(original[key], new[key])]
    assert not unchanged
    record = json.loads((out / "slimlm.json").read_text())
    assert record["cost"]["trainable_percent"] == 100.0 and record["method"]["target_modules"] is None
    assert not (out / "adapter").exists()


@pytest.mark.parametrize("method,lr,steps", [("full", 3e-3, 12), ("lora", 1e-2, 30)])
def test_kd_finetuning_lowers_kl_to_the_teacher(tiny_teacher, tiny_tokenizer, text_dir, tmp_path, method, lr, steps):
    student_dir = save_tiny_model(tmp_path / "student", tiny_tokenizer, layers=2, seed=1)
    out = slimlm.finetune(
        model=str(student_dir),
        teacher=str(tiny_teacher),
        data=str(text_dir),
        out=f"kd-{method}",
        method=method,
        alpha=0.0,
        temperature=1.0,
        dropout=0.0,
        max_steps=steps,
        learning_rate=lr,
        warmup_ratio=0.0,
        **FAST,
    )
    teacher, tok, _ = load_model(tiny_teacher)
    blocks = held_out_blocks(text_dir, tok)
    before = kl_to_teacher(teacher, load_model(student_dir)[0], blocks)
    after = kl_to_teacher(teacher, AutoModelForCausalLM.from_pretrained(out), blocks)
    assert after < 0.8 * before, (before, after)
    record = json.loads((out / "slimlm.json").read_text())
    assert record["method"]["loss"] == "distillation" and record["training"]["log"][-1]["kd"] > 0


@pytest.mark.parametrize("method", ["lora", "full"])
def test_interrupted_finetune_resumes_to_same_weights(tiny_teacher, text_dir, method):
    common = dict(
        model=str(tiny_teacher),
        data=str(text_dir),
        method=method,
        max_steps=4,
        save_steps=2,
        seed=3,
        dropout=0.0,
        learning_rate=1e-2,
        **FAST,
    )
    straight = slimlm.finetune(out="straight", **common)
    stage = slimlm.finetune(out="interrupted", stop_after=2, **common)
    assert stage.name == "interrupted.partial" and (stage / "checkpoints" / "checkpoint-2").is_dir()
    resumed = slimlm.finetune(out="interrupted", resume=True, **common)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


# ------------------------------------------------------------------------------------------ instruction data


def test_prompt_response_masking_puts_labels_on_response_only(tiny_tokenizer):
    record = {"prompt": "What did the President say?", "response": " He spoke of the Union."}
    ids, flags = encode(record, tiny_tokenizer)
    n_prompt = len(tiny_tokenizer(record["prompt"], add_special_tokens=False)["input_ids"])
    assert flags == [False] * n_prompt + [True] * (len(ids) - n_prompt)
    ex = to_example(ids, flags, 64, pad_id=0)
    labelled = ex["shift_labels"][ex["shift_labels"].ne(IGNORE_INDEX)]
    assert tiny_tokenizer.decode(labelled) == record["response"] + tiny_tokenizer.eos_token
    assert ex["shift_labels"][: n_prompt - 1].eq(IGNORE_INDEX).all()  # targets that are prompt tokens
    assert ex["attention_mask"].sum() == len(ids) and ex["shift_labels"][len(ids) - 1 :].eq(IGNORE_INDEX).all()


def test_chat_messages_use_the_template_and_train_assistant_turns_only(tiny_tokenizer):
    tok = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    tok.chat_template = CHAT_TEMPLATE
    messages = [
        {"role": "user", "content": "Name a state."},
        {"role": "assistant", "content": "Virginia"},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Ohio"},
    ]
    ids, flags = encode({"messages": messages}, tok)
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False)
    trained = tok.decode([i for i, f in zip(ids, flags) if f])
    assert trained == "Virginia\nOhio\n"


def test_loss_is_cross_entropy_over_response_tokens_only(tiny_teacher, instructions):
    """The trainer's loss equals CE averaged over response targets; prompt and padding positions add nothing."""
    from slimlm.training.terms import OutputTerm
    from slimlm.training.trainer import DistillTrainer

    model, tok, _ = load_model(tiny_teacher)
    splits = prepare_instructions(instructions, tok, 64)
    batch = {k: torch.stack([splits.train[i][k] for i in range(4)]) for k in splits.train[0]}
    trainer = DistillTrainer(
        model,
        terms=[OutputTerm(temperature=2.0, alpha=1.0)],
        teacher=None,
        precision=None,
        args=TrainingArguments("unused", report_to=[], use_cpu=True),
        train_dataset=splits.train,
    )
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    valid = batch["shift_labels"].ne(IGNORE_INDEX)
    assert valid.sum() < batch["attention_mask"].sum() - 4  # prompt tokens exist and carry no label
    expected = torch.nn.functional.cross_entropy(logits[valid], batch["shift_labels"][valid])
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)


def test_cli_lora_on_instruction_jsonl(capsys, tiny_teacher, instructions):
    code = main(
        [
            "finetune",
            str(tiny_teacher),
            "--data",
            instructions,
            "--out",
            "inst",
            "--max-steps",
            "2",
            "--block-size",
            "64",
            "--no-bf16",
            "--rank",
            "2",
            "--target-modules",
            "q_proj,v_proj",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "trainable parameters" in err and "training tokens/s" in err
    record = json.loads(Path("inst/slimlm.json").read_text())
    assert record["data"]["format"] == "instruction jsonl" and record["data"]["train"]["records"] == 27
    assert record["metrics"]["validation_after"]["scope"].startswith("response tokens")
    config = json.loads(Path("inst/adapter/adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"] and config["r"] == 2


# ------------------------------------------------------------------------------------------ bad input


def run_cli(capsys, *argv):
    code = main([*map(str, argv)])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", ["rank", "target", "field", "empty", "messages"])
def test_bad_input_gets_one_line_error(capsys, tiny_teacher, text_dir, tmp_path, case):
    data, extra, words = str(text_dir), [], []
    if case == "rank":
        extra, words = ["--rank", "0"], ["--rank must be a positive integer"]
    elif case == "target":
        extra, words = ["--target-modules", "q_proj,qkv"], ["qkv", "available", "o_proj"]
    elif case == "field":
        data = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "response": "b"}, {"prompt": "c"}])
        words = ["bad.jsonl:2", '"response"']
    elif case == "empty":
        data, words = str(tmp_path / "empty.jsonl"), ["no records"]
        Path(data).write_text("\n")
    else:
        data = write_jsonl(
            tmp_path / "chat.jsonl",
            [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}] * 3,
        )
        words = ["chat template"]
    code, err = run_cli(
        capsys,
        "finetune",
        tiny_teacher,
        "--data",
        data,
        "--out",
        "out",
        "--max-steps",
        "1",
        "--block-size",
        "32",
        "--no-bf16",
        *extra,
    )
    assert code == 2, err
    assert err and err[-1].startswith("slimlm: error: ") and "Traceback" not in "\n".join(err)
    for word in words:
        assert word in err[-1], err[-1]
    assert not Path("out").exists() and not Path("out.partial").exists()
