"""Tests of the benchmark formats and of loading, checking and selecting prompts."""

from __future__ import annotations

import collections
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from specdec.benchmarks.chat import ChatFormat
from specdec.benchmarks.loader import default_benchmark_path, detect_format, load_benchmark
from specdec.benchmarks.prompts import PromptsFormat
from specdec.benchmarks.questions import QuestionsFormat
from specdec.errors import BenchmarkError
from specdec.records import Conversation, Message
from specdec.registry import BENCHMARK, Registry, benchmarks

if TYPE_CHECKING:
    from collections.abc import Sequence

SPEC_BENCH = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spec_bench" / "question.jsonl"
)


def write(path: Path, *records: Any) -> Path:
    """Write each record as one JSON line (strings are written as they are)."""
    lines = [r if isinstance(r, str) else orjson.dumps(r).decode() for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _all_plugins_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPECDEC_PLUGINS", raising=False)


def test_builtin_formats_are_registered() -> None:
    """The entry points name the three built-in formats."""
    assert {"prompts", "questions", "chat"} <= set(benchmarks.names())
    assert isinstance(benchmarks.create("questions"), QuestionsFormat)


def test_prompts_format(tmp_path: Path) -> None:
    """Prompts keep their id and category; missing ones are filled in."""
    path = write(
        tmp_path / "p.jsonl", {"prompt": "Hi", "id": 7, "category": "greet"}, "", {"prompt": "Bye"}
    )
    generated = "p-" + hashlib.sha256(b"Bye").hexdigest()[:12]
    assert PromptsFormat().load(path) == [
        Conversation(id="7", turns=("Hi",), category="greet"),
        Conversation(id=generated, turns=("Bye",), category="default"),
    ]


def test_questions_format(tmp_path: Path) -> None:
    """Question ids become strings, turns stay in order and other keys are ignored."""
    path = write(
        tmp_path / "q.jsonl",
        {"question_id": 81, "category": "writing", "turns": ["a", "b"], "reference": ["x"]},
    )
    assert QuestionsFormat().load(path) == [
        Conversation(id="81", turns=("a", "b"), category="writing")
    ]


def test_chat_format(tmp_path: Path) -> None:
    """The last user message is the turn; earlier messages are context."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour."},
    ]
    path = write(tmp_path / "c.jsonl", {"messages": messages, "id": "c1", "category": "chat"})
    assert ChatFormat().load(path) == [
        Conversation(
            id="c1",
            turns=("Name a colour.",),
            category="chat",
            context=(
                Message("system", "Be brief."),
                Message("user", "Hi"),
                Message("assistant", "Hello."),
            ),
        )
    ]


def test_json_array_file(tmp_path: Path) -> None:
    """A .json file holds an array of records; errors name the item."""
    path = tmp_path / "p.json"
    path.write_bytes(orjson.dumps([{"prompt": "a"}, {"prompt": "b", "category": "x"}]))
    assert [c.turns for c in load_benchmark(path)] == [("a",), ("b",)]
    path.write_bytes(orjson.dumps([{"prompt": "a"}, {"prompt": 3}]))
    with pytest.raises(BenchmarkError, match=r"p\.json: item 2: 'prompt' must be a string"):
        load_benchmark(path)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"prompt": "a"}, "prompts"),
        ({"question_id": 1, "category": "c", "turns": ["a"]}, "questions"),
        ({"messages": [{"role": "user", "content": "a"}]}, "chat"),
    ],
)
def test_detects_format(tmp_path: Path, record: dict[str, Any], expected: str) -> None:
    """The one format that accepts the first record is chosen."""
    path = write(tmp_path / "b.jsonl", record)
    assert detect_format(path) == expected
    assert len(load_benchmark(path)) == 1


def test_ambiguous_record_needs_format_override(tmp_path: Path) -> None:
    """A record two formats accept is refused unless --benchmark-format chooses one."""
    path = write(tmp_path / "b.jsonl", {"prompt": "p", "question_id": 1, "turns": ["t1", "t2"]})
    with pytest.raises(
        BenchmarkError, match=r"b\.jsonl:1: .*prompts, questions.*--benchmark-format"
    ):
        load_benchmark(path)
    assert load_benchmark(path, "questions")[0].turns == ("t1", "t2")
    assert load_benchmark(path, "prompts")[0].turns == ("p",)


def test_unknown_record_lists_formats(tmp_path: Path) -> None:
    """A record no format accepts names its keys, the formats and the override."""
    path = write(tmp_path / "b.jsonl", {"text": "a"})
    with pytest.raises(
        BenchmarkError,
        match=r"b\.jsonl:1: .*'text'.*chat, prompts, questions.*"
        r"--benchmark-format",
    ):
        load_benchmark(path)


def test_malformed_json_names_file_and_line(tmp_path: Path) -> None:
    """A line that is not JSON is reported with its file and line number."""
    path = write(tmp_path / "b.jsonl", {"prompt": "a"}, "", '{"prompt": "b",}')
    with pytest.raises(BenchmarkError, match=r"b\.jsonl:3: not valid JSON"):
        load_benchmark(path)


def test_line_that_is_not_an_object(tmp_path: Path) -> None:
    """A JSON value that is not an object is refused with its location."""
    path = write(tmp_path / "b.jsonl", {"prompt": "a"}, '["b"]')
    with pytest.raises(BenchmarkError, match=r"b\.jsonl:2: expected a JSON object, got an array"):
        load_benchmark(path)


@pytest.mark.parametrize(
    ("record", "fmt", "message"),
    [
        ({"prompt": 3}, "prompts", "'prompt' must be a string, got a number"),
        ({"prompt": "a", "id": True}, "prompts", "'id' must be a string or an integer"),
        ({"prompt": "a", "category": None}, "prompts", "'category' must be a string, got null"),
        ({"question_id": 1, "turns": "a"}, "questions", "'turns' must be a non-empty list"),
        ({"question_id": 1, "turns": []}, "questions", "got an empty array"),
        ({"question_id": 1, "turns": ["a", 2]}, "questions", r"'turns'\[1\] must be a string"),
        ({"question_id": [1], "turns": ["a"]}, "questions", "'question_id' must be a string or"),
        ({"messages": "hi"}, "chat", "'messages' must be a non-empty list"),
        ({"messages": ["hi"]}, "chat", r"messages\[0\]: a message must be an object"),
        ({"messages": [{"role": "bot", "content": "a"}]}, "chat", "'role' is 'bot'; use one of"),
        ({"messages": [{"role": "user", "content": 1}]}, "chat", "'content' must be a string"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "chat",
            "last message is from 'assistant'",
        ),
    ],
)
def test_wrong_type(tmp_path: Path, record: dict[str, Any], fmt: str, message: str) -> None:
    """Each format refuses a badly shaped record, naming the file and line."""
    path = write(tmp_path / "b.jsonl", record)
    with pytest.raises(BenchmarkError, match=rf"b\.jsonl:1: .*{message}"):
        load_benchmark(path, fmt)


@pytest.mark.parametrize(
    ("fmt", "record", "key"),
    [
        ("prompts", {"id": 1}, "prompt"),
        ("questions", {"turns": ["a"]}, "question_id"),
        ("questions", {"question_id": 1}, "turns"),
        ("chat", {"messages": [{"role": "user"}]}, "content"),
    ],
)
def test_missing_key(tmp_path: Path, fmt: str, record: dict[str, Any], key: str) -> None:
    """A missing required key is named with its location."""
    good = {
        "prompts": {"prompt": "a"},
        "questions": {"question_id": 0, "turns": ["a"]},
        "chat": {"messages": [{"role": "user", "content": "a"}]},
    }[fmt]
    path = write(tmp_path / "b.jsonl", good, record)
    with pytest.raises(BenchmarkError, match=rf"b\.jsonl:2: .*missing key '{key}'"):
        load_benchmark(path)


def test_duplicate_ids_name_both_lines(tmp_path: Path) -> None:
    """A repeated id is refused with the line of each use."""
    path = write(
        tmp_path / "b.jsonl",
        {"prompt": "a", "id": "x"},
        {"prompt": "b", "id": 1},
        {"prompt": "c", "id": "x"},
    )
    with pytest.raises(
        BenchmarkError,
        match=r"b\.jsonl:3: duplicate id 'x', already used at "
        r".*b\.jsonl:1;",
    ):
        load_benchmark(path)


def test_identical_prompts_without_ids_are_duplicates(tmp_path: Path) -> None:
    """Two identical prompts get the same generated id, which is refused."""
    path = write(tmp_path / "b.jsonl", {"prompt": "same"}, {"prompt": "same"})
    with pytest.raises(BenchmarkError, match=r"b\.jsonl:2: duplicate id 'p-[0-9a-f]{12}'"):
        load_benchmark(path)


@pytest.mark.parametrize(
    "record",
    [{"prompt": "  "}, {"question_id": 1, "turns": ["a", ""]}],
)
def test_empty_prompt(tmp_path: Path, record: dict[str, Any]) -> None:
    """A blank prompt or turn is refused with its location."""
    path = write(
        tmp_path / "b.jsonl",
        {"prompt": "a"} if "prompt" in record else {"question_id": 0, "turns": ["a"]},
        record,
    )
    with pytest.raises(BenchmarkError, match=r"b\.jsonl:2: turn \d+ of .* is empty"):
        load_benchmark(path)


@pytest.mark.parametrize("fmt", [None, "prompts"])
def test_empty_file(tmp_path: Path, fmt: str | None) -> None:
    """A file with no records is refused, whether or not the format is given."""
    path = tmp_path / "b.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(BenchmarkError, match=r"b\.jsonl: no prompts"):
        load_benchmark(path, fmt)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a BenchmarkError naming it."""
    with pytest.raises(BenchmarkError, match=r"nope\.jsonl: cannot read the benchmark file"):
        load_benchmark(tmp_path / "nope.jsonl")


def numbered(tmp_path: Path) -> Path:
    """Write six prompts: p0..p5 in categories a, b, a, b, a, b."""
    return write(
        tmp_path / "b.jsonl",
        *({"prompt": f"p{i}", "id": f"p{i}", "category": "ab"[i % 2]} for i in range(6)),
    )


def test_limit(tmp_path: Path) -> None:
    """The limit keeps the first prompts; below 1 it is refused."""
    assert [c.id for c in load_benchmark(numbered(tmp_path), limit=2)] == ["p0", "p1"]
    assert len(load_benchmark(numbered(tmp_path), limit=100)) == 6
    with pytest.raises(BenchmarkError, match="at least 1, got 0"):
        load_benchmark(numbered(tmp_path), limit=0)


def test_categories_then_limit(tmp_path: Path) -> None:
    """Categories are selected first, then the limit applies."""
    path = numbered(tmp_path)
    assert [c.id for c in load_benchmark(path, categories=["b"])] == ["p1", "p3", "p5"]
    assert [c.id for c in load_benchmark(path, categories=["b"], limit=2)] == ["p1", "p3"]
    assert len(load_benchmark(path, categories=("a", "b"))) == 6


def test_per_category(tmp_path: Path) -> None:
    """per_category keeps the first N of each category in file order, before the limit."""
    path = numbered(tmp_path)
    assert [c.id for c in load_benchmark(path, per_category=1)] == ["p0", "p1"]
    assert [c.id for c in load_benchmark(path, per_category=2)] == ["p0", "p1", "p2", "p3"]
    assert [c.id for c in load_benchmark(path, per_category=2, limit=3)] == ["p0", "p1", "p2"]
    assert [c.id for c in load_benchmark(path, per_category=2, categories=["b"])] == ["p1", "p3"]
    with pytest.raises(BenchmarkError, match="per_category must be at least 1, got 0"):
        load_benchmark(path, per_category=0)


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        (["a", "zz"], r"categories 'zz'; the categories present are a, b"),
        ([], "no benchmark categories given"),
    ],
)
def test_bad_categories(tmp_path: Path, categories: Sequence[str], message: str) -> None:
    """An unknown category lists those present; an empty selection is refused."""
    with pytest.raises(BenchmarkError, match=message):
        load_benchmark(numbered(tmp_path), categories=categories)


def test_generated_ids_are_stable(tmp_path: Path) -> None:
    """Generated ids depend only on the text: not on the run nor on the line order."""
    first = write(tmp_path / "1.jsonl", {"prompt": "a"}, {"prompt": "b"})
    second = write(tmp_path / "2.jsonl", {"prompt": "b"}, {"prompt": "a", "category": "x"})
    ids = [c.id for c in PromptsFormat().load(first)]
    assert ids == [c.id for c in PromptsFormat().load(first)]
    assert ids == [c.id for c in reversed(PromptsFormat().load(second))]
    assert ids[0] != ids[1]
    assert all(re.fullmatch(r"p-[0-9a-f]{12}", i) for i in ids)
    hi, bye = ({"messages": [{"role": "user", "content": text}]} for text in ("Hi", "Bye"))
    chat_ids = [c.id for c in ChatFormat().load(write(tmp_path / "c1.jsonl", hi, bye))]
    assert chat_ids == [c.id for c in ChatFormat().load(write(tmp_path / "c2.jsonl", hi, bye))]
    assert chat_ids[0] != chat_ids[1]
    assert chat_ids[0].startswith("c-")


class DuplicatingFormat:
    """A third-party format that forgets to check its own output."""

    name = "dup"
    plugin_api_version = 1

    def accepts(self, record: Any) -> bool:
        return "dup" in record

    def load(self, path: Path) -> Sequence[Conversation]:
        return [Conversation(id="same", turns=(path.name,))] * 2


def test_plugin_output_is_checked(tmp_path: Path) -> None:
    """The loader checks any format's output, naming the item, and detects through the registry."""
    registry = Registry(BENCHMARK, source=lambda _group: [])
    registry.add("dup", DuplicatingFormat)
    path = write(tmp_path / "b.jsonl", {"dup": 1})
    with pytest.raises(
        BenchmarkError,
        match=r"b\.jsonl: item 2 \(from the dup format\): "
        r"duplicate id 'same'",
    ):
        load_benchmark(path, registry=registry)


def test_spec_bench_questions() -> None:
    """The real Spec-Bench file: 480 questions in 13 categories, MT-Bench ones with two turns."""
    if not SPEC_BENCH.is_file():
        pytest.skip(f"{SPEC_BENCH} is absent")
    questions = load_benchmark(SPEC_BENCH)
    assert len(questions) == 480
    by_category = collections.Counter(q.category for q in questions)
    assert len(by_category) == 13
    mt_bench = [
        q
        for q in questions
        if q.category not in {"translation", "summarization", "qa", "math_reasoning", "rag"}
    ]
    assert len(mt_bench) == 80
    assert {len(q.turns) for q in mt_bench} == {2}
    assert questions[0].id == "81"
    assert [q.id for q in load_benchmark(SPEC_BENCH, categories=["rag"], limit=3)] == [
        q.id for q in questions if q.category == "rag"
    ][:3]


def test_sample_benchmark() -> None:
    """The bundled sample: 56 questions, 8 in each of 7 categories."""
    questions = load_benchmark(default_benchmark_path())
    assert len(questions) == 56
    assert set(collections.Counter(q.category for q in questions).values()) == {8}
    assert len({q.category for q in questions}) == 7
    assert sum(len(q.turns) == 2 for q in questions) == 12
