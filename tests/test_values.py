"""Every value a user sets is checked when the config loads, strictly, with a located message.

One table of bad values (each with the message fragment and the ``$.path`` it
must name), one of good edge values (each accepted as what it means), then the
same checks through the command line in-process: exit 2, the message, no
traceback, and no engine (nothing here may start vLLM).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cattrs
import pytest

from specdec.config import config_from_mapping, load_config, read_provenance
from specdec.errors import ConfigError
from specdec.records import ExperimentConfig, TurnRecord
from specdec.runner import prepare_run
from specdec.serialization import problems, structure
from specdec.study import StudyConfig, load_study

Case = tuple[dict[str, Any] | list[str], str]
"""A config mapping, or ``--set`` overrides, and the one problem line it must give."""

BAD: dict[str, Case] = {
    # generation, with vLLM's SamplingParams bounds
    "temperature<0": (["generation.temperature=-1"],
                      "temperature must be >= 0, got -1 @ $.generation.temperature"),
    "temperature>2": (["generation.temperature=2.5"],
                      "temperature must be <= 2, got 2.5 @ $.generation.temperature"),
    "temperature-nan": (["generation.temperature=.nan"],
                        "temperature must be a finite number, got nan @ $.generation.temperature"),
    "top_p>1": (["generation.top_p=2"], "top_p must be <= 1, got 2 @ $.generation.top_p"),
    "top_p=0": (["generation.top_p=0"], "top_p must be > 0, got 0 @ $.generation.top_p"),
    "top_k<-1": (["generation.top_k=-2"],
                 "top_k must be >= -1 (-1 and 0 turn it off), got -2 @ $.generation.top_k"),
    "max_tokens<0": (["generation.max_tokens=-5"],
                     "max_tokens must be >= 1, got -5 @ $.generation.max_tokens"),
    "max_tokens=0": (["generation.max_tokens=0"],
                     "max_tokens must be >= 1, got 0 @ $.generation.max_tokens"),
    "logprobs<-1": (["generation.logprobs=-2"],
                    ("logprobs must be >= 0 or -1 (-1: every token), got -2 "
                     "@ $.generation.logprobs")),
    "logprobs>cap": (["generation.logprobs=25"],
                     ("logprobs asks for 25 log-probabilities, more than vLLM's max_logprobs "
                      "(20, its default): ask for fewer, or raise engine.extra.max_logprobs "
                      "(-1: no cap) @ $.generation.logprobs")),
    "logprobs-all-capped": (["generation.logprobs=-1", "engine.extra={max_logprobs: 30}"],
                            ("every token's log-probability (-1), more than vLLM's max_logprobs "
                             "(30): ask for fewer, or raise engine.extra.max_logprobs (-1: no "
                             "cap) @ $.generation.logprobs")),
    "logprobs>cap-launched": (["generation.logprobs=21", "engine.backend=server",
                               "engine.launch=true"],
                              ("logprobs asks for 21 log-probabilities, more than vLLM's "
                               "max_logprobs (20, its default): ask for fewer, or raise "
                               "engine.extra.max_logprobs (-1: no cap) @ $.generation.logprobs")),
    "stop-empty": (['generation.stop=[""]'],
                   "stop must not hold an empty string @ $.generation.stop"),
    # engine, with vllm.config's bounds and our own
    "dtype": (["engine.dtype=flaot16"], ("dtype must be one of 'auto', 'half', 'float16', "
                                         "'bfloat16', 'float', 'float32', got 'flaot16'; "
                                         "did you mean 'float16'? @ $.engine.dtype")),
    "max_model_len=0": (["engine.max_model_len=0"],
                        ("max_model_len must be >= 1 or -1 (-1: fit to memory; null: the model's "
                        "own), got 0 @ $.engine.max_model_len")),
    "max_model_len<-1": (["engine.max_model_len=-2"], "got -2 @ $.engine.max_model_len"),
    "tensor_parallel=0": (["engine.tensor_parallel_size=0"],
                          ("tensor_parallel_size must be >= 1, got 0 "
                           "@ $.engine.tensor_parallel_size")),
    "pipeline_parallel=0": (["engine.pipeline_parallel_size=0"],
                            ("pipeline_parallel_size must be >= 1, got 0 "
                            "@ $.engine.pipeline_parallel_size")),
    "memory=0": (["engine.gpu_memory_utilization=0"],
                 "gpu_memory_utilization must be > 0, got 0 @ $.engine.gpu_memory_utilization"),
    "memory>1": (["engine.gpu_memory_utilization=1.5"],
                 "gpu_memory_utilization must be <= 1, got 1.5 @ $.engine.gpu_memory_utilization"),
    "max_num_seqs=0": (["engine.max_num_seqs=0"],
                       "max_num_seqs must be >= 1, got 0 @ $.engine.max_num_seqs"),
    "port=0": (["engine.port=0"], "port must be >= 1, got 0 @ $.engine.port"),
    "port>65535": (["engine.port=65536"], "port must be <= 65535, got 65536 @ $.engine.port"),
    "launch_timeout=0": (["engine.launch_timeout_s=0"],
                         "launch_timeout_s must be > 0, got 0 @ $.engine.launch_timeout_s"),
    "concurrency=0": (["engine.concurrency=0"],
                      "concurrency must be >= 1, got 0 @ $.engine.concurrency"),
    "concurrency<0": (["engine.concurrency=-1"],
                      "concurrency must be >= 1, got -1 @ $.engine.concurrency"),
    "request_rate=0": (["engine.request_rate=0"],
                       "request_rate must be > 0, got 0 @ $.engine.request_rate"),
    "request_rate-inf": (["engine.request_rate=.inf"],
                         "request_rate must be a finite number, got inf @ $.engine.request_rate"),
    "timeout<0": (["engine.timeout_s=-1"], "timeout_s must be > 0, got -1 @ $.engine.timeout_s"),
    "limit=0": (["benchmark.limit=0"], "limit must be >= 1, got 0 @ $.benchmark.limit"),
    "per_category=0": (["benchmark.per_category=0"],
                       "per_category must be >= 1, got 0 @ $.benchmark.per_category"),
    # no coercion
    "string-false": ({"engine": {"enforce_eager": "false"}},
                     ("expected true or false, got the string 'false': write true or false, "
                     "without quotes @ $.engine.enforce_eager")),
    "string-no": ({"warmup": "no"},
                  ("expected true or false, got the string 'no': write true or false, "
                  "without quotes @ $.warmup")),
    "quoted-false-set": (['engine.enforce_eager="false"'],
                         ("got the string 'false': write true or false, without quotes "
                         "@ $.engine.enforce_eager")),
    "int-as-bool": ({"chat_template": 1}, "expected true or false, got 1 @ $.chat_template"),
    "fraction-as-int": ({"generation": {"max_tokens": 12.7}},
                        ("expected an integer, got 12.7 (an integer has no fraction) "
                        "@ $.generation.max_tokens")),
    "fraction-as-int-set": (["generation.max_tokens=12.7"],
                            ("expected an integer, got 12.7 (an integer has no fraction) "
                            "@ $.generation.max_tokens")),
    "bool-as-int": ({"generation": {"max_tokens": True}},
                    "expected an integer, got true @ $.generation.max_tokens"),
    "bool-as-float": ({"generation": {"temperature": False}},
                      "expected a number, got false @ $.generation.temperature"),
    "quoted-int": ({"generation": {"max_tokens": "12"}},
                   ("expected an integer, got the string '12': write the number without quotes "
                   "@ $.generation.max_tokens")),
    "word-as-int": ({"engine": {"tensor_parallel_size": "two"}},
                    "expected an integer, got the string 'two' @ $.engine.tensor_parallel_size"),
    "quoted-float": ({"generation": {"top_p": "0.9"}},
                     ("expected a number, got the string '0.9': write the number without quotes "
                     "@ $.generation.top_p")),
    "number-as-string": ({"model": 3}, "expected a string, got 3: put it in quotes @ $.model"),
    "mapping-as-list": ({"generation": {"stop": {"a": 1}}},
                        "expected a list, got a mapping @ $.generation.stop"),
    "number-as-list": ({"sinks": 3}, "expected a list, got 3 @ $.sinks"),
    "number-in-list": (["benchmark.categories=[math, 1]"],
                       "expected a string, got 1: put it in quotes @ $.benchmark.categories[1]"),
    "string-as-section": (["generation=fast"],
                          "expected a mapping, got the string 'fast' @ $.generation"),
    # unknown keys, with the closest field offered
    "misspelt-generation": ({"generation": {"max_token": 3}},
                            ("extra fields found (max_token); did you mean 'max_tokens'? "
                            "@ $.generation")),
    "misspelt-engine": (["engine.concurency=2"],
                        "extra fields found (concurency); did you mean 'concurrency'? @ $.engine"),
    "misspelt-two": ({"generation": {"max_token": 3, "sed": 1}},
                     ("extra fields found (max_token, sed); did you mean 'max_tokens' for "
                     "'max_token', 'seed' for 'sed'? @ $.generation")),
    "misspelt-top-level": ({"warmpu": False},
                           "extra fields found (warmpu); did you mean 'warmup'? @ $"),
    "unknown-no-match": ({"zzz": 1}, "extra fields found (zzz) @ $"),
    "misspelt-choice": (["mode=batc"], ("must be one of 'batch', 'sequential', got the string "
                                        "'batc'; did you mean 'batch'? @ $.mode")),
    "number-as-choice": ({"mode": 1}, "must be one of 'batch', 'sequential', got 1 @ $.mode"),
}


@pytest.mark.parametrize(("given", "expected"), BAD.values(), ids=BAD.keys())
def test_bad_value_is_refused_at_load(given: dict[str, Any] | list[str], expected: str) -> None:
    """The config is refused when it loads, with exactly one located problem line."""
    def load() -> ExperimentConfig:
        if isinstance(given, dict):
            return config_from_mapping(given)
        return load_config(None, given)

    with pytest.raises(ConfigError) as info:
        load()
    assert len(info.value.problems) == 1, info.value.problems
    assert expected in info.value.problems[0], info.value.problems
    assert " @ $" in expected, "every row names its path"
    assert info.value.problems[0].endswith(expected.rpartition(" @ ")[2])


GOOD: dict[str, tuple[list[str], str, Any]] = {
    "temperature=0": (["generation.temperature=0"], "generation.temperature", 0.0),
    "temperature=2": (["generation.temperature=2"], "generation.temperature", 2.0),
    "int-temperature-is-float": (["generation.temperature=1"], "generation.temperature", 1.0),
    "top_p=1": (["generation.top_p=1"], "generation.top_p", 1.0),
    "top_p-small": (["generation.top_p=0.01"], "generation.top_p", 0.01),
    "top_k=-1": (["generation.top_k=-1"], "generation.top_k", -1),
    "top_k=0": (["generation.top_k=0"], "generation.top_k", 0),
    "top_k=1": (["generation.top_k=1"], "generation.top_k", 1),
    "top_k-null": (["generation.top_k=null"], "generation.top_k", None),
    "max_tokens=1": (["generation.max_tokens=1"], "generation.max_tokens", 1),
    "whole-float-is-int": (["generation.max_tokens=12.0"], "generation.max_tokens", 12),
    "logprobs=0": (["generation.logprobs=0"], "generation.logprobs", 0),
    "logprobs=-1-uncapped": (["generation.logprobs=-1", "engine.extra={max_logprobs: -1}"],
                             "generation.logprobs", -1),
    "logprobs-at-cap": (["generation.logprobs=20"], "generation.logprobs", 20),
    "logprobs-raised-cap": (["generation.logprobs=25", "engine.extra={max_logprobs: 30}"],
                            "generation.logprobs", 25),
    "logprobs-other-server": (["generation.logprobs=25", "engine.backend=server"],
                              "generation.logprobs", 25),
    "seed-negative": (["generation.seed=-1"], "generation.seed", -1),
    "stop-wrapped": (["generation.stop=</s>"], "generation.stop", ("</s>",)),
    "stop-list": (["generation.stop=[a, b]"], "generation.stop", ("a", "b")),
    "sinks-wrapped": (["sinks=json"], "sinks", ("json",)),
    "categories-wrapped": (["benchmark.categories=math"], "benchmark.categories", ("math",)),
    "dtype-any-case": (["engine.dtype=BFloat16"], "engine.dtype", "BFloat16"),
    "max_model_len=-1": (["engine.max_model_len=-1"], "engine.max_model_len", -1),
    "max_model_len=1": (["engine.max_model_len=1"], "engine.max_model_len", 1),
    "max_model_len-null": (["engine.max_model_len=null"], "engine.max_model_len", None),
    "memory=1": (["engine.gpu_memory_utilization=1"], "engine.gpu_memory_utilization", 1.0),
    "port=1": (["engine.port=1"], "engine.port", 1),
    "port=65535": (["engine.port=65535"], "engine.port", 65535),
    "concurrency=1": (["engine.concurrency=1"], "engine.concurrency", 1),
    "request_rate-small": (["engine.request_rate=0.5"], "engine.request_rate", 0.5),
    "timeout-small": (["engine.timeout_s=0.1"], "engine.timeout_s", 0.1),
    "limit=1": (["benchmark.limit=1"], "benchmark.limit", 1),
    "per_category=2": (["benchmark.per_category=2"], "benchmark.per_category", 2),
    "yaml-true": (["engine.enforce_eager=true"], "engine.enforce_eager", True),
    # --set reads YAML, where a bare no is the boolean false (a quoted "no" is refused above)
    "yaml-no": (["warmup=no"], "warmup", False),
}


@pytest.mark.parametrize(("overrides", "key", "value"), GOOD.values(), ids=GOOD.keys())
def test_edge_value_is_accepted(overrides: list[str], key: str, value: Any) -> None:
    """Valid edge values load as what they mean, of the declared type."""
    node: Any = load_config(None, overrides)
    for part in key.split("."):
        node = getattr(node, part)
    assert node == value
    assert type(node) is type(value)


STRATEGY_BAD: dict[str, tuple[list[str], str]] = {
    "misspelt-option": (["strategy.name=ngram", "strategy.num_speculative_token=3"],
                        ("extra fields found (num_speculative_token); did you mean "
                        "'num_speculative_tokens'? @ $.strategy")),
    "fraction": (["strategy.name=ngram", "strategy.num_speculative_tokens=2.5"],
                 ("expected an integer, got 2.5 (an integer has no fraction) "
                 "@ $.strategy.num_speculative_tokens")),
    "bool": (["strategy.name=eagle", "strategy.num_speculative_tokens=true"],
             "expected an integer, got true @ $.strategy.num_speculative_tokens"),
    "zero": (["strategy.name=mtp", "strategy.num_speculative_tokens=0"],
             "num_speculative_tokens must be >= 1, got 0 @ $.strategy.num_speculative_tokens"),
    "number-as-model": (["strategy.name=draft_model", "strategy.model=7"],
                        "expected a string, got 7: put it in quotes @ $.strategy.model"),
    "suffix-probability": (["strategy.name=suffix", "strategy.min_token_prob=2"],
                           "min_token_prob must be <= 1, got 2 @ $.strategy.min_token_prob"),
    "suffix-cache": (["strategy.name=suffix", "strategy.max_cached_requests=-1"],
                     "max_cached_requests must be >= 0, got -1 @ $.strategy.max_cached_requests"),
    "suffix-factor": (["strategy.name=suffix", "strategy.max_spec_factor=-0.5"],
                      "max_spec_factor must be >= 0, got -0.5 @ $.strategy.max_spec_factor"),
}


@pytest.mark.parametrize(("overrides", "expected"), STRATEGY_BAD.values(),
                         ids=STRATEGY_BAD.keys())
def test_bad_strategy_option_is_refused_first(overrides: list[str], expected: str) -> None:
    """Strategy options get the same strictness, before the benchmark or model is read."""
    config = load_config(None, [*overrides, "benchmark.path=/nonexistent.jsonl"])
    with pytest.raises(ConfigError) as info:
        prepare_run(config)
    assert [p for p in info.value.problems if expected in p], info.value.problems


def test_study_values_are_strict(tmp_path: Path) -> None:
    """A study file: a lone model is wrapped, a misspelt key is offered its match."""
    path = tmp_path / "study.yaml"
    path.write_text("models: smollm2-135m\nstrategies: [{name: ngram, sweep: "
                    "{num_speculative_tokens: [2, 4]}}]\n", encoding="utf-8")
    assert load_study(path).models == ("smollm2-135m",)
    path.write_text("modles: [smollm2-135m]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"extra fields found \(modles\); did you mean "
                                          r"'models'\? @ \$"):
        load_study(path)
    path.write_text("strategies: [{name: ngram, sweep: {num_speculative_tokens: four}}]\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match=r"expected a list, got the string 'four'"):
        load_study(path)
    with pytest.raises(cattrs.BaseValidationError) as info:
        structure({"repeats": 1.5}, StudyConfig)
    assert problems(info.value) == [
        "expected an integer, got 1.5 (an integer has no fraction) @ $.repeats"]


@pytest.mark.parametrize(("ids", "found"), [([1, True], "bool"), ([1, "2"], "str")])
def test_token_ids_refuse_bools_and_strings(ids: list[Any], found: str) -> None:
    """The fast number-tuple path stays strict."""
    record = {"prompt": "p", "output": "o", "prompt_tokens": 1, "output_tokens": 2,
              "ttft_s": 0.1, "decode_s": 0.2, "output_token_ids": ids}
    with pytest.raises(cattrs.BaseValidationError) as info:
        structure(record, TurnRecord)
    assert problems(info.value) == [
        f"expected a list of int values, found {found} @ $.output_token_ids"]
    assert structure({**record, "output_token_ids": [1, 2]}, TurnRecord).output_token_ids == (1, 2)


def test_defaults_pass_their_own_validators() -> None:
    """The defaults are valid values (a validator that refused them would refuse every run)."""
    assert config_from_mapping({}) == ExperimentConfig()


LATIN1 = "model: caf\xe9\n".encode("latin-1")
UTF16 = "model: x\n".encode("utf-16")


@pytest.mark.parametrize(("data", "fragment"), [
    (LATIN1, "cannot read file: not UTF-8 text (byte 0xe9 at offset 10); save it as UTF-8 @ $"),
    (UTF16, ("cannot read file: not UTF-8 text (byte 0xff at offset 0) (it looks like UTF-16); "
            "save it as UTF-8 @ $")),
], ids=["latin-1", "utf-16"])
def test_config_not_utf8_is_one_located_line(tmp_path: Path, data: bytes, fragment: str) -> None:
    """A config file in another encoding is refused by name, also when reading provenance."""
    path = tmp_path / "exp.yaml"
    path.write_bytes(data)
    for read in (load_config, read_provenance):
        with pytest.raises(ConfigError) as info:
            read(path)
        assert info.value.source == str(path)
        assert info.value.problems == [fragment]


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """UTF-8 with the byte-order mark some Windows editors write still loads."""
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"\xef\xbb\xbfmodel: x\n")
    assert load_config(path).model == "x"


def test_broken_yaml_provenance_is_located(tmp_path: Path) -> None:
    """A run's config.yaml cut short is a ConfigError, not a traceback."""
    path = tmp_path / "config.yaml"
    path.write_text("schema_version: 1\nprovenance: {run_id: [x\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken YAML at line 3"):
        read_provenance(path)
