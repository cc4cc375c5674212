import json

import pytest
import torch

from grpolab.cli import main
from grpolab.errors import UserError
from grpolab.model.loading import ensure_tiny_random, load_model, load_tokenizer
from grpolab.stages.sft_data import Tokenised, collate, pack, read_records, tokenise

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "and 4*4?"},
    {"role": "assistant", "content": "16"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(ensure_tiny_random()))


def test_only_assistant_turns_are_learned(tokenizer):
    example = tokenise(tokenizer, CONVERSATION)
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    learned = [t for t, m in zip(example.input_ids, example.loss_mask) if m]
    # each assistant turn: its content, the end-of-turn token and the template's newline
    assert tokenizer.decode(learned) == "5<|im_end|>\n16<|im_end|>\n"


def test_prompt_completion_pairs_become_conversations(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "completion": "yo"}) + "\n\n" + json.dumps({"messages": CONVERSATION}))
    records = read_records(str(path))
    assert records[0] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    assert records[1] == CONVERSATION


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "is not valid JSON"),
        ('{"text": "x"}', "needs 'messages' or 'prompt' and 'completion'"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "has no assistant message"),
        ('{"messages": [{"role": "user"}]}', "messages must be a list"),
    ],
)
def test_bad_records_name_the_line(tmp_path, line, message):
    path = tmp_path / "d.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match=message) as error:
        read_records(str(path))
    assert f"{path}:1" in str(error.value)


def test_packing_restarts_positions_and_fills_rows():
    examples = [Tokenised([1, 2, 3], [0, 1, 1]), Tokenised([4, 5], [0, 1]), Tokenised([6, 7, 8, 9], [0, 0, 1, 1])]
    rows = pack(examples, max_length=5)
    assert [r.input_ids for r in rows] == [[1, 2, 3, 4, 5], [6, 7, 8, 9]]
    assert rows[0].position_ids == [0, 1, 2, 0, 1]
    assert rows[0].segment_ids == [1, 1, 1, 2, 2]
    assert [r.input_ids for r in pack(examples, max_length=5, packing=False)] == [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    assert pack([Tokenised([1, 2, 3, 4], [1, 1, 1, 1])], max_length=3)[0].input_ids == [1, 2, 3]  # truncated
    batch = collate(rows, pad_id=0)
    # targets: token t+1 learned and in the same example; token 4 starts example 2, so position 2 predicts nothing
    assert batch["targets_mask"].tolist() == [[True, True, False, True], [False, True, True, False]]


def test_packed_examples_do_not_see_each_other():
    model = load_model(str(ensure_tiny_random())).eval()
    first, second = [10, 11, 12, 13], [20, 21, 22]
    batch = collate(pack([Tokenised(first, [1] * 4), Tokenised(second, [1] * 3)], max_length=16), pad_id=0)
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
        ).logits
        alone = [model(input_ids=torch.tensor([ids])).logits for ids in (first, second)]
    assert torch.allclose(packed[0, :4], alone[0][0], atol=1e-5)
    assert torch.allclose(packed[0, 4:7], alone[1][0], atol=1e-5)


def test_sft_command_learns_the_assistant_answer(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": "42"}) + "\n" for i in range(4)))
    out = tmp_path / "run"
    argv = ["sft", "model=tiny-random", f"data={data}", f"output_dir={out}", "train.learning_rate=3e-3"]
    assert main([*argv, "train.max_steps=12", "train.batch_size=2", "train.micro_batch_size=1", "--quiet"]) == 0
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0]
    assert (out / "config.yaml").exists() and (out / "final" / "model.safetensors").exists()
    assert load_model(str(out / "final")) is not None


def test_sft_bad_input_leaves_no_folder(tmp_path, capsys):
    assert main(["sft", "model=tiny-random", f"data={tmp_path}/missing.jsonl", f"output_dir={tmp_path}/r"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["sft", "model=tiny-random", f"output_dir={tmp_path}/r"]) == 2
    assert "data: give a JSONL file" in capsys.readouterr().err
