"""Calibration data: every file format, every preset (through the fake Hub), sampling, masking, bad inputs."""

from __future__ import annotations

import gzip
import io
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from svdtool.calibration import PRESETS, CalibRequest, prepare_calibration
from svdtool.calibration import readers as readers_mod
from svdtool.calibration.encode import IGNORE, collate, encode_examples
from svdtool.calibration.examples import Example, choose_fields, reservoir, sample_examples
from svdtool.calibration.presets import ALPACA_WITH_INPUT, ALPACA_WITHOUT_INPUT, plain_prompt
from svdtool.calibration.readers import iter_records
from svdtool.calibration.sources import parse_source, resolve_source
from svdtool.errors import SvdtoolError
from tests.lora_ga_support import (
    CHAT_TEMPLATE,
    qa_records,
    text_records,
    tiny_tokenizer,
    write_json_array,
    write_jsonl,
    write_parquet,
)

# ---------------------------------------------------------------- formats


def _gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return path


@pytest.fixture
def records() -> list[dict[str, str]]:
    return qa_records(23, seed=3)


@pytest.mark.parametrize("kind", ["jsonl", "json", "json.gz", "jsonl.gz", "parquet"])
def test_every_format_reads_every_record_in_order(tmp_path: Path, records: list[dict[str, str]], kind: str) -> None:
    path = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        write_jsonl(path, records)
    elif kind == "json":
        write_json_array(path, records)
    elif kind == "json.gz":
        _gz(path, json.dumps(records))
    elif kind == "jsonl.gz":
        _gz(path, "".join(json.dumps(r) + "\n" for r in records))
    else:
        write_parquet(path, records, row_group_size=5)  # 5 row groups
    got = list(iter_records(path, ["query", "response"] if kind == "parquet" else None))
    assert [(r["query"], r["response"]) for r in got] == [(r["query"], r["response"]) for r in records]


def test_txt_is_one_record_per_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\nsecond line\r\nthird\n")
    assert [r["text"] for r in iter_records(path)] == ["first line", "", "second line", "third"]


def test_big_json_array_streams_across_buffer_refills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSON array parsed with a tiny buffer: every record and number survives the chunk boundaries."""
    recs = [{"query": "q" * (i % 17), "response": "r", "n": 10**i % 997, "x": [1.5, {"y": None}]} for i in range(300)]
    path = write_json_array(tmp_path / "big.json", recs)
    monkeypatch.setattr(readers_mod, "CHUNK_CHARS", 7)
    assert list(iter_records(path)) == recs


def test_parquet_reads_only_the_requested_columns(tmp_path: Path, records: list[dict[str, str]]) -> None:
    path = write_parquet(tmp_path / "d.parquet", records)
    first = next(iter(iter_records(path, ["response"])))
    assert set(first) == {"response"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("   \n", "is empty"),
        ('[{"a": 1}, {"a": 2}', "not closed"),
        ('[{"a": 1} {"a": 2}]', "expected ','"),
        ('{"a": 1}\n{"a": oops}\n', "invalid JSON"),
        ("[1, 2]", "record 0 is a JSON int"),
    ],
)
def test_malformed_json_gives_one_clear_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(SvdtoolError, match=message) as exc:
        list(iter_records(path))
    assert "\n" not in str(exc.value)


def test_unsupported_suffix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b\n")
    with pytest.raises(SvdtoolError, match="unsupported calibration file type"):
        resolve_source(str(path))


# ---------------------------------------------------------------- fields and bad inputs


def _source(tmp_path: Path, records: list[dict[str, str]], name: str = "d.jsonl"):  # type: ignore[no-untyped-def]
    return resolve_source(str(write_jsonl(tmp_path / name, records)))


def test_fields_explicit_preset_and_auto(tmp_path: Path) -> None:
    src = _source(tmp_path, qa_records(3, q="question", a="answer"))
    assert choose_fields(src, None, None, None).prompt_fields == ("question",)  # recognised pair
    spec = choose_fields(src, "question,id", "answer", None)
    assert spec.prompt_fields == ("question", "id") and spec.response_field == "answer"
    assert choose_fields(src, None, None, "answer").text_field == "answer"
    odd = _source(tmp_path, [{"foo": "x", "bar": "y"}], "odd.jsonl")
    with pytest.raises(SvdtoolError, match="cannot tell which fields"):
        choose_fields(odd, None, None, None)
    with pytest.raises(SvdtoolError, match="go together"):
        choose_fields(src, "question", None, None)


def test_missing_field_is_one_clear_line(tmp_path: Path) -> None:
    src = _source(tmp_path, qa_records(5))
    spec = choose_fields(src, "query", "answer", None)
    with pytest.raises(SvdtoolError, match="record 0 has no field 'answer'") as exc:
        sample_examples(src, spec, 3, 0)
    assert "\n" not in str(exc.value) and "fields: query, response, id" in str(exc.value)


def test_empty_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(SvdtoolError, match="is empty"):
        prepare_calibration(CalibRequest(str(path), samples=2), tiny_tokenizer())


def test_fewer_samples_than_asked_is_one_clear_line(tmp_path: Path) -> None:
    recs = qa_records(4) + [{"query": "x", "response": "  ", "id": "blank"}]
    path = write_jsonl(tmp_path / "few.jsonl", recs)
    with pytest.raises(
        SvdtoolError, match=r"has 4 usable samples \(1 blank records skipped\), fewer than --samples 10"
    ):
        prepare_calibration(CalibRequest(str(path), samples=10), tiny_tokenizer())


# ---------------------------------------------------------------- sampling


def test_sampling_is_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    src = _source(tmp_path, qa_records(50))
    spec = choose_fields(src, None, None, None)
    a = [e.index for e in sample_examples(src, spec, 8, seed=1).examples]
    b = [e.index for e in sample_examples(src, spec, 8, seed=1).examples]
    c = [e.index for e in sample_examples(src, spec, 8, seed=2).examples]
    assert a == b and a != c
    assert a == sorted(a) and len(set(a)) == 8
    assert [e.index for e in sample_examples(src, spec, 50, seed=3).examples] == list(range(50))


def test_reservoir_is_uniform() -> None:
    """Every item is chosen with probability n/N (2000 draws: 500 ± 4σ with σ ≈ 19)."""
    items = [Example(i, text=str(i)) for i in range(20)]
    counts: Counter[int] = Counter()
    for seed in range(2000):
        chosen, seen = reservoir(iter(items), 5, seed)
        assert seen == 20
        counts.update(e.index for e in chosen)
    assert all(424 <= counts[i] <= 576 for i in range(20)), counts


# ---------------------------------------------------------------- tokenization and masking


def test_chat_template_masks_the_prompt() -> None:
    tok = tiny_tokenizer(chat=True)
    ex = Example(0, prompt="what is the total", plain_prompt=None, response="it is ten")
    [enc], stats = encode_examples([ex], tok, 64)
    assert stats.chat_template
    tokens = tok.convert_ids_to_tokens(enc.input_ids)
    assert tokens == "<s> user: what is the total </s> <s> assistant: it is ten </s>".split()
    n_prompt = len("<s> user: what is the total </s> <s> assistant:".split())
    assert enc.labels[:n_prompt] == [IGNORE] * n_prompt
    assert enc.labels[n_prompt:] == enc.input_ids[n_prompt:]
    assert enc.loss_tokens == 4


def test_plain_prompt_follows_the_reference_encoding() -> None:
    """Without a chat template: prompt + " " + response + eos, the prompt's own tokens masked."""
    tok = tiny_tokenizer(chat=False)
    ex = Example(0, prompt="tom has two apples", plain_prompt="Q: tom has two apples A:", response="so two")
    [enc], stats = encode_examples([ex], tok, 64)
    assert not stats.chat_template
    assert tok.convert_ids_to_tokens(enc.input_ids) == "Q: tom has two apples A: so two </s>".split()
    assert enc.labels == [IGNORE] * 6 + enc.input_ids[6:]


def test_plain_text_targets_every_token_and_truncates() -> None:
    tok = tiny_tokenizer()
    ex = Example(0, text="the cat has a red dog and a blue cat")
    [enc], stats = encode_examples([ex], tok, 5)
    assert enc.labels == enc.input_ids and len(enc.input_ids) == 5 and stats.truncated == 1


def test_samples_without_target_tokens_are_dropped_or_refused() -> None:
    tok = tiny_tokenizer(chat=True)
    long_prompt = Example(0, prompt="the " * 40, response="ten")
    ok = Example(1, prompt="a", response="one two")
    items, stats = encode_examples([long_prompt, ok], tok, 16)
    assert [e.index for e in items] == [1] and stats.dropped == 1
    with pytest.raises(SvdtoolError, match="raise --max-length"):
        encode_examples([long_prompt], tok, 16)


def test_collate_pads_right_and_masks_pads() -> None:
    tok = tiny_tokenizer()
    items, _ = encode_examples([Example(0, text="a b c"), Example(1, text="the cat")], tok, 16)
    batch = collate(items, tok.pad_token_id)
    assert batch["attention_mask"].tolist()[1] == [1, 1, 0]
    assert batch["labels"][1, 2].item() == IGNORE
    assert batch["input_ids"][1, 2].item() == tok.pad_token_id


@pytest.mark.parametrize(("multiple", "width"), [(1, 3), (2, 4), (3, 3), (64, 64)])
def test_collate_rounds_the_width_up_with_pads_that_carry_no_loss(multiple: int, width: int) -> None:
    """CUDA graphs see few shapes: the width is rounded up to a multiple, and every extra column is a pad."""
    tok = tiny_tokenizer()
    items, _ = encode_examples([Example(0, text="a b c"), Example(1, text="the cat")], tok, 16)
    plain, padded = collate(items, tok.pad_token_id), collate(items, tok.pad_token_id, multiple)
    assert padded["input_ids"].shape == (2, width)
    for key in plain:
        assert torch.equal(padded[key][:, :3], plain[key])
    assert (padded["attention_mask"][:, 3:] == 0).all() and (padded["labels"][:, 3:] == IGNORE).all()
    assert (padded["input_ids"][:, 3:] == tok.pad_token_id).all()


def test_alpaca_prompts_match_the_reference_templates() -> None:
    assert plain_prompt("alpaca", {"instruction": "add", "input": ""}) == ALPACA_WITHOUT_INPUT.format(instruction="add")
    assert plain_prompt("alpaca", {"instruction": "add", "input": "2 2"}) == ALPACA_WITH_INPUT.format(
        instruction="add", input="2 2"
    )
    assert plain_prompt("qa", {"query": "two?"}) == "Q: two?\nA: "
    assert plain_prompt(None, {"a": "x", "b": "", "c": "y"}) == "x\n\ny"


def test_prepare_records_provenance(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", qa_records(12))
    cs = prepare_calibration(CalibRequest(str(path), samples=6, max_length=32, seed=5), tiny_tokenizer())
    info = cs.info
    assert (info.kind, info.format, info.data, info.used, info.records_read) == (
        "local",
        "json",
        "prompt-response",
        6,
        12,
    )
    assert info.fields == {"prompt": "query", "response": "response"} and info.chat_template
    assert info.tokens == sum(len(e.input_ids) for e in cs.items)
    assert info.loss_tokens == sum(e.loss_tokens for e in cs.items) > 0


# ---------------------------------------------------------------- presets and Hub files (fake Hub)


def _preset_file(name: str) -> bytes:
    """A tiny file with the preset's file name, layout and fields."""
    rng = random.Random(len(name))
    words = "the a cat dog has two apples so ten total".split()

    def s(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    if name == "metamathqa":
        recs = [{"query": s(6), "response": s(5), "type": "GSM_AnsAug", "original_question": s(4)} for _ in range(9)]
        return json.dumps(recs).encode()
    if name == "c4":
        recs = [{"text": s(8), "timestamp": "2019-04-25", "url": f"https://x/{i}"} for i in range(9)]
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in recs).encode())
        return buf.getvalue()
    import pyarrow as pa
    import pyarrow.parquet as pq

    if name == "gsm8k":
        rows = [{"question": s(6), "answer": s(4) + " #### 7"} for _ in range(9)]
    elif name == "alpaca":
        rows = [{"instruction": s(4), "input": s(3) if i % 2 else "", "output": s(5), "text": ""} for i in range(9)]
    else:  # wikitext2: blank rows and headings as in the real file
        rows = [{"text": ""}, {"text": " = Title = \n"}] + [{"text": s(8) + "\n"} for _ in range(8)]
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out, row_group_size=4)
    return out.getvalue()


_CHILD = """
import json, sys
from svdtool.calibration import resolve_source
from svdtool.calibration.examples import choose_fields, sample_examples
from svdtool.errors import SvdtoolError
try:
    src = resolve_source(sys.argv[1])
    spec = choose_fields(src, None, None, None)
    got = sample_examples(src, spec, 4, 0)
    print(json.dumps({"sha": src.sha, "repo": src.repo, "file": src.file, "kind": spec.kind,
                      "examples": [[e.prompt, e.plain_prompt, e.response, e.text] for e in got.examples]}))
except SvdtoolError as exc:
    print("ERROR " + str(exc))
"""


def _resolve_in_child(spec: str, env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-c", _CHILD, spec], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_presets_and_hub_files_through_the_fake_hub(fake_hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shas = {}
    for name, preset in PRESETS.items():
        shas[name] = fake_hub.add_repo(preset.repo, files={preset.path: _preset_file(name)}, repo_type="dataset")
    env = fake_hub.env(tmp_path / "hf_home")
    for name, preset in PRESETS.items():
        out = json.loads(_resolve_in_child(name, env))
        assert (out["sha"], out["repo"], out["file"]) == (shas[name], preset.repo, preset.path), name
        assert len(out["examples"]) == 4
        if preset.text_field:
            assert out["kind"] == "text" and all(t and t.strip() for *_, t in out["examples"])
        else:
            assert out["kind"] == "prompt-response" and all(p and r for p, _, r, _ in out["examples"])
    # the reference's prompt formats for models without a chat template
    gsm = json.loads(_resolve_in_child("gsm8k", env))["examples"][0]
    assert gsm[1] == f"Q: {gsm[0]}\nA: "
    alpaca = json.loads(_resolve_in_child("alpaca", env))["examples"]
    assert all(p.startswith(("### Instruction", "Below is an instruction")) for _, p, _, _ in alpaca)
    # any Hub dataset file, at a pinned revision
    other = fake_hub.add_repo("someone/mydata", files={"sub/d.jsonl": b'{"text": "a b c"}\n' * 5}, repo_type="dataset")
    out = json.loads(_resolve_in_child(f"hf://datasets/someone/mydata@{other}/sub/d.jsonl", env))
    assert out["sha"] == other and out["kind"] == "text"
    missing = _resolve_in_child("hf://datasets/someone/mydata/nope.jsonl", env)
    assert missing.startswith("ERROR ") and "nope.jsonl" in missing


def test_source_parsing() -> None:
    assert parse_source("metamathqa")[:2] == ("preset", PRESETS["metamathqa"])
    assert parse_source("gsm8k@abc")[4] == "abc"
    assert parse_source("hf://datasets/o/n@v1/a/b.parquet")[2:] == ("o/n", "a/b.parquet", "v1")
    assert parse_source("./local.jsonl")[0] == "local"
    with pytest.raises(SvdtoolError, match="hf://datasets/owner/name"):
        parse_source("hf://models/o/n/file.json")
    with pytest.raises(SvdtoolError, match="not a preset"):
        resolve_source("no-such-preset-or-file.jsonl")


def test_chat_template_constant_renders() -> None:
    assert tiny_tokenizer().chat_template == CHAT_TEMPLATE
    assert isinstance(text_records(2)[0]["text"], str)
