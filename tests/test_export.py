"""Tests of the Spec-Bench figures in :mod:`specdec.metrics` and of :mod:`specdec.export`.

The last tests read the exported files exactly as Spec-Bench's own
``evaluation/speed.py`` and ``evaluation/equal.py`` do (their logic copied
below) and check that they give the figures specdec computes from its records.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import orjson
import pytest

from specdec.errors import SpecdecError
from specdec.export import export_spec_bench, load_run_records
from specdec.metrics import (
    group_metrics,
    spec_bench_accept_lengths,
    spec_bench_mean_accepted_tokens,
    spec_bench_speedup,
    spec_metrics,
    speedup,
)
from specdec.records import RequestRecord, SpecStats, TurnRecord
from specdec.serialization import unstructure


def words(n: int) -> str:
    """An answer text of ``n`` space-separated words: ``n`` tokens for FakeTokenizer."""
    return " ".join(f"w{k}" for k in range(n))


def steps(*accepted: int) -> SpecStats:
    """Counts of one turn whose draft steps accepted ``accepted`` tokens, in order (k = 3)."""
    histogram = [0] * 4
    for a in accepted:
        histogram[a] += 1
    return SpecStats(
        num_drafts=len(accepted),
        num_draft_tokens=3 * len(accepted),
        num_accepted_tokens=sum(accepted),
        accepted_per_position=tuple(sum(a > i for a in accepted) for i in range(3)),
        acceptance_histogram=tuple(histogram),
        accepted_per_step=accepted,
    )


def turn(
    output_tokens: int, ttft_s: float, decode_s: float, spec: SpecStats | None = None
) -> TurnRecord:
    return TurnRecord(
        prompt="question",
        output=words(output_tokens),
        prompt_tokens=10,
        output_tokens=output_tokens,
        ttft_s=ttft_s,
        decode_s=decode_s,
        finish_reason="length",
        spec=spec,
    )


# --- spec_bench_accept_lengths ------------------------------------------------------------


def test_baseline_turn_is_one_token_per_step() -> None:
    """Without speculation every step, the prefill included, gives one token."""
    assert spec_bench_accept_lengths(turn(4, 0.1, 0.3)) == [1, 1, 1, 1]


def test_no_draft_steps_are_one_token_each() -> None:
    """Counts with no draft at all give the baseline's entries."""
    assert spec_bench_accept_lengths(turn(3, 0.1, 0.3, SpecStats())) == [1, 1, 1]


def test_draft_steps_give_accepted_plus_one() -> None:
    """Prefill 1, each draft step accepted + 1, then the steps without a draft.

    12 tokens: prefill 1 + drafts (3+1) + (0+1) + (2+1) = 9, so 3 steps without a draft.
    """
    lengths = spec_bench_accept_lengths(turn(12, 0.1, 0.3, steps(3, 0, 2)))
    assert lengths == [1, 4, 1, 3, 1, 1, 1]
    assert sum(lengths) == 12


def test_cut_last_step_is_trimmed_to_the_output() -> None:
    """vLLM counts the last step's accepted tokens before max_tokens cuts them.

    From a real ngram run (max_tokens 24): prefill 1 + draft steps 3+1+4+4+4+4+4 = 25
    tokens for 24 generated, so no step without a draft and the last entry loses one.
    """
    lengths = spec_bench_accept_lengths(turn(24, 0.1, 0.3, steps(2, 0, 3, 3, 3, 3, 3)))
    assert lengths == [1, 3, 1, 4, 4, 4, 4, 3]
    assert sum(lengths) == 24


def test_trim_reaches_back_past_exhausted_steps() -> None:
    """An excess larger than the last entry trims the ones before it, never below 1."""
    lengths = spec_bench_accept_lengths(turn(5, 0.1, 0.3, steps(3, 1)))
    assert lengths == [1, 3, 1]


def test_steps_from_the_histogram_when_not_listed() -> None:
    """Counts without accepted_per_step use the histogram, in increasing acceptance."""
    spec = attrs.evolve(steps(2, 0, 2), accepted_per_step=())
    assert spec_bench_accept_lengths(turn(10, 0.1, 0.3, spec)) == [1, 1, 3, 3, 1, 1]


def test_totals_only_are_refused() -> None:
    """Engine totals without per-step counts cannot be split into steps."""
    spec = SpecStats(num_drafts=2, num_draft_tokens=6, num_accepted_tokens=3)
    with pytest.raises(ValueError, match="2 draft steps"):
        spec_bench_accept_lengths(turn(8, 0.1, 0.3, spec))


def test_no_output_has_no_steps() -> None:
    assert spec_bench_accept_lengths(turn(0, 0.1, 0.0)) == []


# --- the records used by the figure and speed.py tests ------------------------------------

CANDIDATE = (
    RequestRecord(
        id="1",
        category="writing",
        turns=(
            turn(12, 0.125, 0.375, steps(3, 0, 2)),  # [1, 4, 1, 3, 1, 1, 1]
            turn(8, 0.0625, 0.1875, steps(3, 3)),  # [1, 4, 3]: last step cut by one
        ),
    ),
    RequestRecord(
        id="2",
        category="math_reasoning",
        turns=(turn(6, 0.1, 0.15, steps(1, 0, 1)),),  # [1, 2, 1, 2]
    ),
    RequestRecord(
        id="3",
        category="writing",
        turns=(turn(5, 0.3, 0.2, SpecStats()),),  # [1, 1, 1, 1, 1]
    ),
)
BASELINE = (
    RequestRecord(
        id="1",
        category="writing",
        turns=(turn(12, 0.25, 1.25), turn(8, 0.125, 0.875)),
    ),
    RequestRecord(id="2", category="math_reasoning", turns=(turn(6, 0.2, 0.55),)),
    RequestRecord(id="3", category="writing", turns=(turn(5, 0.3, 0.45),)),
)


def test_mean_accepted_tokens_by_hand() -> None:
    """31 tokens over 19 steps; the baseline's is exactly 1."""
    assert spec_bench_mean_accepted_tokens(CANDIDATE) == pytest.approx(31 / 19, rel=1e-12)
    assert spec_bench_mean_accepted_tokens(BASELINE) == 1.0
    assert spec_bench_mean_accepted_tokens([]) is None


def test_mean_accepted_tokens_differs_from_vllm_mean_acceptance_length() -> None:
    """vLLM's figure counts only steps with a draft: 1 + 13 / 8 here, not 31 / 19."""
    candidate = group_metrics(CANDIDATE).spec
    assert candidate is not None
    assert candidate.mean_acceptance_length == pytest.approx(1 + 13 / 8, rel=1e-12)
    assert spec_bench_mean_accepted_tokens(CANDIDATE) != pytest.approx(
        candidate.mean_acceptance_length
    )


def test_mean_accepted_tokens_of_draft_steps_only_is_vllms() -> None:
    """With every token from a draft step except the prefill's, only the prefill differs."""
    record = RequestRecord(id="x", category="c", turns=(turn(9, 0.1, 0.2, steps(3, 3)),))
    spec = spec_metrics(steps(3, 3))
    assert spec.mean_acceptance_length == 4.0
    assert spec_bench_mean_accepted_tokens([record]) == pytest.approx(9 / 3, rel=1e-12)


def test_speedup_by_hand() -> None:
    """Per-request rates (20/0.75, 6/0.25, 5/0.5) over (20/2.5, 6/0.75, 5/0.75)."""
    candidate = (20 / 0.75 + 6 / 0.25 + 5 / 0.5) / 3
    baseline = (20 / 2.5 + 6 / 0.75 + 5 / 0.75) / 3
    assert spec_bench_speedup(CANDIDATE, BASELINE) == pytest.approx(candidate / baseline, rel=1e-12)


def test_speedup_is_the_reported_tokens_per_s_mean_ratio() -> None:
    """The same figure as specdec's Spec-Bench speedup of ``tokens_per_s_mean``."""
    reported = speedup(
        group_metrics(CANDIDATE).tokens_per_s_mean, group_metrics(BASELINE).tokens_per_s_mean
    )
    assert spec_bench_speedup(CANDIDATE, BASELINE) == pytest.approx(reported, rel=1e-12)


def test_speedup_refuses_what_speed_py_cannot_divide() -> None:
    with pytest.raises(ValueError, match="no candidate requests"):
        spec_bench_speedup([], BASELINE)
    timeless = RequestRecord(id="z", category="c", turns=(turn(3, 0.0, 0.0),))
    with pytest.raises(ValueError, match="'z' has no walltime"):
        spec_bench_speedup(CANDIDATE, [timeless])
    silent = RequestRecord(id="s", category="c", turns=(turn(0, 0.5, 0.0),))
    with pytest.raises(ValueError, match="no tokens"):
        spec_bench_speedup(CANDIDATE, [silent])


# --- export_spec_bench: the file --------------------------------------------------------

HAND_WRITTEN_METRICS = """{
  "schema_version": 1,
  "provenance": {"specdec": "0.1.0"},
  "config": {"model": "tiny"},
  "summary": {},
  "requests": [
    {"id": "qa-7", "category": "qa", "turns": [
      {"prompt": "Who?", "output": "Ada.", "prompt_tokens": 3, "output_tokens": 6,
       "ttft_s": 0.25, "decode_s": 0.5, "finish_reason": "stop", "output_token_ids": [],
       "spec": {"num_drafts": 2, "num_draft_tokens": 6, "num_accepted_tokens": 3,
                "accepted_per_position": [2, 1, 0], "acceptance_histogram": [0, 1, 1, 0],
                "accepted_per_step": [2, 1]}}]},
    {"id": "81", "category": "writing", "turns": [
      {"prompt": "Write.", "output": "Done.", "prompt_tokens": 2, "output_tokens": 2,
       "ttft_s": 0.5, "decode_s": 0.25, "finish_reason": "stop", "output_token_ids": [],
       "spec": null},
      {"prompt": "Again.", "output": "Done again.", "prompt_tokens": 9, "output_tokens": 3,
       "ttft_s": 0.125, "decode_s": 0.375, "finish_reason": "stop", "output_token_ids": [],
       "spec": null}]},
    {"id": "9", "category": "writing", "turns": [
      {"prompt": "Hi.", "output": "Hello.", "prompt_tokens": 2, "output_tokens": 1,
       "ttft_s": 0.5, "decode_s": 0.0, "finish_reason": "stop", "output_token_ids": [],
       "spec": null}]}
  ]
}
"""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hand_written_metrics_json_exports_spec_bench_lines(tmp_path: Path) -> None:
    run = tmp_path / "my-run"
    run.mkdir()
    (run / "metrics.json").write_text(HAND_WRITTEN_METRICS)
    out = tmp_path / "answers" / "model.jsonl"

    assert export_spec_bench(run, out) == 3

    lines = read_jsonl(out)
    # Sorted by question id as Spec-Bench's reorg_answer_file leaves them: ints first.
    assert [line["question_id"] for line in lines] == [9, 81, "qa-7"]
    for line in lines:
        assert list(line) == [
            "question_id",
            "category",
            "answer_id",
            "model_id",
            "choices",
            "tstamp",
        ]
        assert isinstance(line["answer_id"], str)
        assert isinstance(line["tstamp"], float)
        assert line["model_id"] == "my-run"
    assert lines[1]["category"] == "writing"
    assert lines[1]["choices"] == [
        {
            "index": 0,
            "turns": ["Done.", "Done again."],
            "decoding_steps": [2, 3],
            "new_tokens": [2, 3],
            "wall_time": [0.75, 0.5],
            "accept_lengths": [1, 1, 1, 1, 1],
        }
    ]
    assert lines[2]["choices"] == [
        {
            "index": 0,
            "turns": ["Ada."],
            "decoding_steps": [3],
            "new_tokens": [6],
            "wall_time": [0.75],
            "accept_lengths": [1, 3, 2],
        }
    ]


def test_model_id_is_given(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(HAND_WRITTEN_METRICS)
    out = tmp_path / "out.jsonl"
    export_spec_bench(tmp_path, out, model_id="smollm2-ngram")
    assert {line["model_id"] for line in read_jsonl(out)} == {"smollm2-ngram"}


def write_responses(path: Path, records: tuple[RequestRecord, ...]) -> None:
    common = {"schema_version": 1, "provenance": {"specdec": "0.1.0"}}
    path.write_bytes(b"".join(orjson.dumps({**common, **unstructure(r)}) + b"\n" for r in records))


def write_metrics(path: Path, records: tuple[RequestRecord, ...]) -> None:
    path.write_bytes(orjson.dumps({"schema_version": 1, "requests": unstructure(records)}))


def test_responses_jsonl_when_no_metrics_json(tmp_path: Path) -> None:
    write_responses(tmp_path / "responses.jsonl", CANDIDATE)
    assert load_run_records(tmp_path) == list(CANDIDATE)


def test_metrics_json_is_preferred(tmp_path: Path) -> None:
    write_responses(tmp_path / "responses.jsonl", CANDIDATE)
    write_metrics(tmp_path / "metrics.json", BASELINE)
    assert load_run_records(tmp_path) == list(BASELINE)


def test_folder_without_records_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SpecdecError, match=r"neither metrics\.json nor responses\.jsonl"):
        export_spec_bench(tmp_path, tmp_path / "out.jsonl")


def test_invalid_record_names_file_and_place(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text('{"requests": [{"id": "1", "category": "c"}]}')
    with pytest.raises(SpecdecError, match=r"required field missing @ \$\.requests\[0\]\.turns"):
        export_spec_bench(tmp_path, tmp_path / "out.jsonl")


def test_invalid_jsonl_line_names_the_line(tmp_path: Path) -> None:
    write_responses(tmp_path / "responses.jsonl", CANDIDATE[:1])
    with (tmp_path / "responses.jsonl").open("ab") as handle:
        handle.write(b'{"id": "2", "category": "c", "turns": [], "extra": 1}\n')
    with pytest.raises(SpecdecError, match=r"line 2:\n  extra fields found \(extra\)"):
        export_spec_bench(tmp_path, tmp_path / "out.jsonl")


def test_duplicate_question_ids_are_an_error(tmp_path: Path) -> None:
    twin = attrs.evolve(CANDIDATE[0], id="01")  # question id 1, as "1" is
    write_metrics(tmp_path / "metrics.json", (*CANDIDATE, twin))
    with pytest.raises(SpecdecError, match="two requests with question id 1"):
        export_spec_bench(tmp_path, tmp_path / "out.jsonl")


def test_unsplittable_counts_are_an_error(tmp_path: Path) -> None:
    totals = SpecStats(num_drafts=2, num_draft_tokens=6, num_accepted_tokens=3)
    record = RequestRecord(id="t", category="c", turns=(turn(8, 0.1, 0.3, totals),))
    write_metrics(tmp_path / "metrics.json", (record,))
    with pytest.raises(SpecdecError, match="cannot export request 't'"):
        export_spec_bench(tmp_path, tmp_path / "out.jsonl")


# --- Spec-Bench's own readers, copied ------------------------------------------------------


class Encoded:
    def __init__(self, input_ids: list[str]) -> None:
        self.input_ids = input_ids


class FakeTokenizer:
    """Stands in for ``AutoTokenizer``: a BOS token, then one token per word."""

    def __call__(self, text: str) -> Encoded:
        return Encoded(["<s>", *text.split()])


def spec_bench_speed(  # noqa: C901, PLR0912 - a literal copy of speed.py's branches
    jsonl_file: Path, jsonl_file_base: Path, tokenizer: Callable[[str], Any], task: str
) -> tuple[float, float, float, list[int]]:
    """``speed()`` of hemingkx/Spec-Bench ``evaluation/speed.py``, logic unchanged.

    Only the tokenizer is passed in built (speed.py loads it with
    ``AutoTokenizer.from_pretrained``) and the printing is left out.
    """
    mt_bench_list = [
        "writing",
        "roleplay",
        "reasoning",
        "math",
        "coding",
        "extraction",
        "stem",
        "humanities",
    ]

    data = []
    with jsonl_file.open(encoding="utf-8") as file:
        for line in file:
            json_obj = json.loads(line)
            if task == "overall":
                data.append(json_obj)
            elif task == "mt_bench":
                if json_obj["category"] in mt_bench_list:
                    data.append(json_obj)
            elif json_obj["category"] == task:
                data.append(json_obj)

    speeds = []
    accept_lengths_list: list[int] = []
    for datapoint in data:
        tokens = sum(datapoint["choices"][0]["new_tokens"])
        times = sum(datapoint["choices"][0]["wall_time"])
        accept_lengths_list.extend(datapoint["choices"][0]["accept_lengths"])
        speeds.append(tokens / times)

    data = []
    with jsonl_file_base.open(encoding="utf-8") as file:
        for line in file:
            json_obj = json.loads(line)
            if task == "overall":
                data.append(json_obj)
            elif task == "mt_bench":
                if json_obj["category"] in mt_bench_list:
                    data.append(json_obj)
            elif json_obj["category"] == task:
                data.append(json_obj)

    speeds0 = []
    for datapoint in data:
        answer = datapoint["choices"][0]["turns"]
        tokens = 0
        for i in answer:
            tokens += len(tokenizer(i).input_ids) - 1
        times = sum(datapoint["choices"][0]["wall_time"])
        speeds0.append(tokens / times)

    tokens_per_second = float(np.array(speeds).mean())
    tokens_per_second_baseline = float(np.array(speeds0).mean())
    speedup_ratio = float(np.array(speeds).mean() / np.array(speeds0).mean())
    return tokens_per_second, tokens_per_second_baseline, speedup_ratio, accept_lengths_list


def spec_bench_get_content(jsonfile_path: Path) -> list[str]:
    """``get_content()`` of ``evaluation/equal.py``: one ``str(turns)`` per answer line."""
    contents = []
    with jsonfile_path.open(encoding="utf-8") as file:
        for line in file:
            datapoint = json.loads(line)
            contents.append(str(datapoint["choices"][0]["turns"]))
    return contents


def export_pair(
    tmp_path: Path,
    candidate: tuple[RequestRecord, ...] = CANDIDATE,
    baseline: tuple[RequestRecord, ...] = BASELINE,
) -> tuple[Path, Path]:
    files = []
    for name, records in (("candidate", candidate), ("baseline", baseline)):
        run = tmp_path / name
        run.mkdir()
        write_metrics(run / "metrics.json", records)
        out = tmp_path / "model_answer" / f"{name}.jsonl"
        assert export_spec_bench(run, out) == len(records)
        files.append(out)
    return files[0], files[1]


@pytest.mark.parametrize(
    ("task", "categories"),
    [
        ("overall", {"writing", "math_reasoning"}),
        ("writing", {"writing"}),
        ("math_reasoning", {"math_reasoning"}),
        ("mt_bench", {"writing"}),
    ],
)
def test_speed_py_reads_the_figures_specdec_reports(
    tmp_path: Path, task: str, categories: set[str]
) -> None:
    candidate_file, baseline_file = export_pair(tmp_path)
    _, _, speedup_ratio, accept_lengths = spec_bench_speed(
        candidate_file, baseline_file, FakeTokenizer(), task
    )
    candidate = [r for r in CANDIDATE if r.category in categories]
    baseline = [r for r in BASELINE if r.category in categories]

    assert speedup_ratio == pytest.approx(spec_bench_speedup(candidate, baseline), rel=1e-12)
    assert float(np.mean(accept_lengths)) == pytest.approx(
        spec_bench_mean_accepted_tokens(candidate), rel=1e-12
    )


def test_speed_py_tokens_per_second_are_the_reported_means(tmp_path: Path) -> None:
    candidate_file, baseline_file = export_pair(tmp_path)
    rate, base_rate, _, _ = spec_bench_speed(
        candidate_file, baseline_file, FakeTokenizer(), "overall"
    )
    assert rate == pytest.approx(group_metrics(CANDIDATE).tokens_per_s_mean, rel=1e-12)
    assert base_rate == pytest.approx(group_metrics(BASELINE).tokens_per_s_mean, rel=1e-12)


def test_speed_py_on_a_baseline_against_itself(tmp_path: Path) -> None:
    """A baseline against itself: speedup 1 and one token per step, in both readings."""
    candidate_file, baseline_file = export_pair(tmp_path, candidate=BASELINE)
    _, _, speedup_ratio, accept_lengths = spec_bench_speed(
        candidate_file, baseline_file, FakeTokenizer(), "overall"
    )
    assert speedup_ratio == pytest.approx(1.0, rel=1e-12)
    assert spec_bench_speedup(BASELINE, BASELINE) == pytest.approx(1.0, rel=1e-12)
    assert accept_lengths == [1] * sum(r.output_tokens for r in BASELINE)


def test_equal_py_compares_the_answer_texts(tmp_path: Path) -> None:
    """Same texts line for line in both exports; one changed answer makes them differ."""
    candidate_file, baseline_file = export_pair(tmp_path)
    assert spec_bench_get_content(candidate_file) == spec_bench_get_content(baseline_file)
    assert spec_bench_get_content(candidate_file)[0] == str([words(12), words(8)])

    changed = (
        *CANDIDATE[:2],
        attrs.evolve(CANDIDATE[2], turns=(attrs.evolve(CANDIDATE[2].turns[0], output="x"),)),
    )
    other = tmp_path / "other"
    other.mkdir()
    write_metrics(other / "metrics.json", changed)
    other_file = tmp_path / "other.jsonl"
    export_spec_bench(other, other_file)
    assert spec_bench_get_content(other_file) != spec_bench_get_content(baseline_file)
