"""specdec train eagle: the head's math, each step on a tiny Llama, and one real run end to end.

The unit tests build a tiny random Llama with transformers and never start vLLM.
The one engine test trains a head on a few hundred tokens of the bundled model
(generation, hidden states, a few steps, save), then measures it with vLLM's
``eagle`` method; the full training is a documented command (docs/eagle.md).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from cyclopts import App
from specdec import models
from specdec.errors import InvalidOptionError, ModelError

from specdec_train import EAGLE_ALIAS, TrainingError, TrainOptions, check_target, train_eagle
from specdec_train.command import TrainCommand
from specdec_train.data import TrainSequence, build_sequences, held_out_ids, split_prompts
from specdec_train.pipeline import stage_keys

torch = pytest.importorskip("torch")

BIN = Path(sys.executable).parent


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run one of specdec's console scripts as a user would, capturing its output."""
    command, *rest = args
    return subprocess.run([str(BIN / command), *rest], capture_output=True, text=True,
                          timeout=timeout, check=False)


def specdec_app() -> App:
    """A ``specdec`` application holding only this package's commands, as the core adds them."""
    app = App(name="specdec", result_action="return_value")
    TrainCommand().register(app)
    return app


def parse_train_eagle(*flags: str) -> TrainOptions:
    """The options ``specdec train eagle FLAGS`` would train with (nothing runs)."""
    _command, bound, _ignored = specdec_app().parse_args(
        ["train", "eagle", *flags], exit_on_error=False, print_error=False)
    options: TrainOptions = bound.arguments.get("options") or TrainOptions()
    return options

TINY: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 256,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
    "hidden_act": "silu",
}


@pytest.fixture(scope="module")
def tiny_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random two-layer Llama saved as a Hugging Face folder (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "target"
    LlamaForCausalLM(LlamaConfig(**TINY)).save_pretrained(str(folder))
    return folder


def _config(folder: Path) -> dict[str, Any]:
    config: dict[str, Any] = orjson.loads((folder / "config.json").read_bytes())
    return config


def _sequences(count: int = 24, seed: int = 0) -> list[TrainSequence]:
    rng = random.Random(seed)  # noqa: S311 - test data
    return [
        TrainSequence(f"c{i}#0", tuple(rng.randrange(TINY["vocab_size"])
                                       for _ in range(rng.randint(8, 30))), 4, i % 6 == 0)
        for i in range(count)
    ]


def _options(tmp_path: Path, **changes: Any) -> TrainOptions:
    settings: dict[str, Any] = {
        "target": "unused", "output": tmp_path / "head", "batch_tokens": 96,
        "shard_tokens": 200, "collect_dtype": "float32", "feature_dtype": "float32",
        "max_steps": 6, "eval_every": 3, "checkpoint_every": 1, "ce_vocab": 50,
        "warmup_steps": 2, "autocast": False, "evaluate": False,
    }
    settings.update(changes)
    return TrainOptions(**settings)


def _head(target: Path) -> Any:
    from specdec_train.head import EagleHead
    from specdec_train.trainer import target_weights

    weights = target_weights(target)
    head = EagleHead(_config(target), weights["model.embed_tokens.weight"])
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.normal_(0, 0.1)
    return head, weights


def _reference_layer(head: Any) -> Any:
    """transformers' own Llama layer holding the head's weights, input norm removed."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(**TINY)
    config._attn_implementation = "eager"
    layer = LlamaDecoderLayer(config, 0).eval()
    state = {k.removeprefix("layers.0."): v for k, v in head.state_dict().items()
             if k.startswith("layers.0.")}
    result = layer.load_state_dict(state, strict=False)
    assert result.missing_keys == ["input_layernorm.weight"]
    layer.input_layernorm = torch.nn.Identity()
    rotary = LlamaRotaryEmbedding(config)

    def run(embed: Any, tokens: Any, hidden: Any) -> Any:
        x = head.fc(torch.cat((embed[tokens], hidden), dim=-1))
        length = x.shape[1]
        mask = torch.full((length, length), float("-inf")).triu(1)[None, None]
        positions = torch.arange(length)[None]
        return layer(x, attention_mask=mask, position_ids=positions,
                     position_embeddings=rotary(x, positions))

    return run


def test_first_step_is_a_llama_layer_without_input_norm(tiny_target: Path) -> None:
    """Step 0 is fc(cat(embed(next token), hidden)) through a Llama layer with no input norm."""
    head, weights = _head(tiny_target)
    embed = weights["model.embed_tokens.weight"]
    tokens = torch.randint(0, 100, (1, 12))
    hidden = torch.randn(1, 12, 64)
    with torch.no_grad():
        ours = head(tokens, hidden, tokens, 1)[0]
        reference = _reference_layer(head)(embed, tokens[:, 1:], hidden[:, :-1])
    assert torch.allclose(ours, reference, atol=1e-5)


def test_drafting_steps_attend_like_the_draft_kv_cache(tiny_target: Path) -> None:
    """Step s at row i equals the layer run on rows 0..i plus the s drafted inputs after them."""
    head, weights = _head(tiny_target)
    embed = weights["model.embed_tokens.weight"]
    reference = _reference_layer(head)
    tokens = torch.randint(0, 100, (1, 10))
    greedy = torch.randint(0, 100, (1, 10))
    hidden = torch.randn(1, 10, 64)
    with torch.no_grad():
        steps = head(tokens, hidden, greedy, 3)
        for row in range(10 - 3):
            ids = list(tokens[0, 1 : row + 2])
            states = [hidden[0, j] for j in range(row + 1)]
            for step in (1, 2):
                ids.append(greedy[0, row + step])
                states.append(steps[step - 1][0, row])
                out = reference(embed, torch.tensor(ids)[None], torch.stack(states)[None])
                assert torch.allclose(out[0, -1], steps[step][0, row], atol=1e-4), (row, step)


def test_warm_start_predicts_the_current_state(tiny_target: Path) -> None:
    """fc = [0 | I] and zeroed output projections: the untrained head returns its input state."""
    from specdec_train.head import warm_start

    head, weights = _head(tiny_target)
    warm_start(head, weights, TINY["num_hidden_layers"])
    assert "layers.0.input_layernorm.weight" not in head.state_dict()
    hidden = torch.randn(2, 9, 64)
    with torch.no_grad():
        out = head(torch.randint(0, 100, (2, 9)), hidden, torch.zeros(2, 9, dtype=torch.long), 1)
    assert torch.allclose(out[0], hidden[:, :-1], atol=1e-6)


def test_features_are_post_norm_hidden_states(tiny_target: Path, tmp_path: Path) -> None:
    """Shards hold transformers' last_hidden_state (after the final norm) and greedy tokens."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from specdec_train.features import collect

    sequences = _sequences()
    manifest = collect(_options(tmp_path), tiny_target, sequences, tmp_path / "work")
    assert manifest.complete
    assert {s.split for s in manifest.shards} == {"train", "val"}
    assert sum(s.sequences for s in manifest.of("val")) == sum(s.val for s in sequences)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_target)).eval()
    by_id = {s.id: s for s in sequences}
    first = manifest.shards[0]
    data = load_file(str(tmp_path / "work" / "features" / first.name))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "work" / "features" / first.name), framework="pt") as f:
        ids = orjson.loads(f.metadata()["ids"])
    seq = by_id[ids[0]]
    length = len(seq.tokens)
    with torch.no_grad():
        out = model(torch.tensor([seq.tokens]), output_hidden_states=True)
    expected = model.model(torch.tensor([seq.tokens])).last_hidden_state[0]
    assert torch.allclose(out.hidden_states[-1][0], expected)
    assert torch.allclose(data["features"][:length], expected, atol=1e-5)
    assert data["labels"][:length].tolist() == out.logits[0].argmax(-1).tolist()
    assert data["tokens"][:length].tolist() == list(seq.tokens)
    assert int(data["answer_start"][0]) == seq.answer_start


def test_collection_resumes_after_its_last_shard(tiny_target: Path, tmp_path: Path) -> None:
    """An interrupted collection continues after its last written shard, with the same shards."""
    from safetensors.torch import load_file

    from specdec_train.features import collect

    sequences = _sequences()
    whole = collect(_options(tmp_path), tiny_target, sequences, tmp_path / "whole")

    def stop(done: int, _total: int) -> None:
        if done > len(sequences) // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        collect(_options(tmp_path), tiny_target, sequences, tmp_path / "cut", on_progress=stop)
    resumed = collect(_options(tmp_path), tiny_target, sequences, tmp_path / "cut")
    assert [s.name for s in resumed.shards] == [s.name for s in whole.shards]
    for shard in whole.shards:
        a = load_file(str(tmp_path / "whole" / "features" / shard.name))
        b = load_file(str(tmp_path / "cut" / "features" / shard.name))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_objective_trains_the_head(tiny_target: Path, tmp_path: Path) -> None:
    """Regression plus cross-entropy: finite, with gradients on fc and the layer, and falling."""
    from specdec_train.features import collect
    from specdec_train.trainer import Trainer

    options = _options(tmp_path, max_steps=12, lr=3e-3)
    collect(options, tiny_target, _sequences(), tmp_path / "work")
    trainer = Trainer(options, tiny_target, _config(tiny_target), tmp_path / "work")
    result = trainer.run()
    assert result.steps == 12
    assert set(result.state) >= {"fc.weight", "layers.0.self_attn.q_proj.weight"}
    losses = [h["val_loss"] for h in result.history if "val_loss" in h]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0]
    assert 0 <= result.validation["acc"][0] <= 1
    assert len(result.validation["acc"]) == 3


def test_feature_noise_reaches_inputs_only_while_training(tiny_target: Path,
                                                          tmp_path: Path) -> None:
    """Noise changes the training loss, not the held-out one, and never the regression target."""
    from specdec_train.features import collect
    from specdec_train.trainer import Trainer, make_batch

    options = _options(tmp_path, feature_noise=0.5)
    collect(options, tiny_target, _sequences(), tmp_path / "work")
    trainer = Trainer(options, tiny_target, _config(tiny_target), tmp_path / "work")
    data = trainer.train.load(0)
    batch = make_batch(data, list(range(min(4, len(trainer.train.lengths[0])))))
    clean = batch.hidden.clone()
    with torch.no_grad():
        held_out = [trainer.objective(trainer.head, batch, 2)[0] for _ in range(2)]
        noisy = [trainer.objective(trainer.head, batch, 2, train=True)[0] for _ in range(2)]
    assert torch.equal(batch.hidden, clean)
    assert torch.equal(held_out[0], held_out[1])
    assert not torch.equal(noisy[0], noisy[1])
    assert not torch.equal(noisy[0], held_out[0])


def test_resume_matches_an_uninterrupted_training(tiny_target: Path, tmp_path: Path) -> None:
    """Stopping after step 4 and resuming from the checkpoint ends with the same weights."""
    from specdec_train.features import collect
    from specdec_train.trainer import Trainer

    options = _options(tmp_path, max_steps=8)
    for name in ("whole", "cut"):
        collect(options, tiny_target, _sequences(), tmp_path / name)
    config = _config(tiny_target)
    whole = Trainer(options, tiny_target, config, tmp_path / "whole").run()

    def stop(step: int, _total: int, _figures: dict[str, Any]) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(options, tiny_target, config, tmp_path / "cut").run(on_step=stop)
    resumed = Trainer(options, tiny_target, config, tmp_path / "cut").run()
    assert resumed.steps == whole.steps == 8
    for key, value in whole.state.items():
        assert torch.allclose(value, resumed.state[key], atol=1e-6), key
    assert [h.get("loss") for h in resumed.history] == [h.get("loss") for h in whole.history]


def test_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    """A GPT-2 target is refused before any work, naming what is supported."""
    with pytest.raises(ModelError, match=r"'gpt2' \(GPT2LMHeadModel\) is not supported"):
        check_target({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "x")
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_bytes(orjson.dumps(
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    options = TrainOptions(target=str(folder), output=tmp_path / "head")
    with pytest.raises(ModelError, match="llama targets only"):
        train_eagle(options)
    assert not (tmp_path / "head").exists()
    assert not (tmp_path / "head.partial").exists()
    with pytest.raises(ModelError, match="hidden_act"):
        check_target({**TINY, "hidden_act": "gelu"}, "x")


def test_save_writes_vllm_layout_atomically(tiny_target: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """vLLM's tensor names only; a failed save leaves nothing; a finished head is kept."""
    from safetensors import safe_open

    from specdec_train import save
    from specdec_train.head import warm_start

    head, weights = _head(tiny_target)
    warm_start(head, weights, 2)
    state = head.head_state()
    out = tmp_path / "head"
    card = {"target": {"model": "tiny"}, "training": {"history": []}}

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save.save_head(out, state, _config(tiny_target), card, name="t", overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".head.lock"]
    monkeypatch.undo()

    save.save_head(out, state, _config(tiny_target), card, name="t", overwrite=False)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(save.HEAD_TENSORS)
        assert f.get_slice("fc.weight").get_shape() == [64, 128]
    assert _config(out)["num_hidden_layers"] == 1
    assert (out / models.MARKER).is_file()
    assert "Measured acceptance" in (out / "README.md").read_text()
    with pytest.raises(TrainingError, match="already holds a finished EAGLE head"):
        save.save_head(out, state, _config(tiny_target), card, name="t", overwrite=False)
    save.save_head(out, state, _config(tiny_target), {**card, "v": 2}, name="t", overwrite=True)
    assert orjson.loads((out / "training.json").read_bytes())["v"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".head.lock", "head"]


def test_bundled_alias_until_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a shipped head the alias refuses with the command to run, then resolves once
    trained; the trained head is what the alias names (and wins over a shipped one)."""
    from specdec.serialization import structure
    from specdec.strategies.eagle import Eagle3Options, EagleOptions

    monkeypatch.setenv("SPECDEC_HOME", str(tmp_path))
    monkeypatch.setattr(models, "HEADS", tmp_path / "no-shipped-heads")
    alias = models.bundled(EAGLE_ALIAS)
    assert not alias.prepared
    with pytest.raises(ModelError, match="not trained yet: run `specdec train eagle`"):
        models.resolve_model(EAGLE_ALIAS)
    assert not alias.path.exists()
    alias.path.mkdir(parents=True)
    (alias.path / "config.json").write_text("{}")
    (alias.path / models.MARKER).write_text('{"layers": 1}')
    assert models.resolve_model(EAGLE_ALIAS) == alias.path
    assert EagleOptions().model == EAGLE_ALIAS
    assert TrainOptions().output_path() == alias.path
    assert structure({}, Eagle3Options).model == models.EAGLE3_ALIAS
    with pytest.raises(ModelError, match=r"run `specdec train eagle --head eagle3`"):
        models.resolve_model(models.EAGLE3_ALIAS)


def test_changed_training_options_keep_generation_and_features() -> None:
    """Each step's key covers its options and the steps before it."""
    base = stage_keys(TrainOptions())
    lr = stage_keys(TrainOptions(lr=1e-4))
    assert (lr["generate"], lr["features"]) == (base["generate"], base["features"])
    assert lr["train"] != base["train"]
    assert lr["evaluate"] != base["evaluate"]
    tokens = stage_keys(TrainOptions(max_tokens=64))
    assert all(tokens[k] != base[k] for k in base)


def test_evaluation_prompts_are_held_out(tmp_path: Path) -> None:
    """Prompts that are also evaluation prompts are not trained on; a split is seeded."""
    extra = tmp_path / "extra.jsonl"
    extra.write_text('{"prompt": "Name three colours."}\n{"prompt": "Count to five."}\n')
    held = tmp_path / "held.jsonl"
    held.write_text('{"prompt": "Count to five."}\n')
    split = split_prompts(TrainOptions(prompts=(extra,), include_sample=False, eval_prompts=held))
    assert [c.turns for c in split.train] == [("Name three colours.",)]
    assert [c.turns for c in split.held_out] == [("Count to five.",)]
    ids = [f"q{i}" for i in range(40)]
    assert held_out_ids(ids, 0.1, 0) == held_out_ids(ids, 0.1, 0)
    assert len(held_out_ids(ids, 0.1, 0)) == 4
    assert held_out_ids(ids, 0.1, 0) != held_out_ids(ids, 0.1, 1)


def test_options_are_checked() -> None:
    """Bad numbers are option errors naming the option (the CLI exits 2 on them)."""
    with pytest.raises(InvalidOptionError, match="holdout_fraction must be in"):
        parse_train_eagle("--holdout", "1.5")


def test_sequences_rebuild_the_engine_prompt() -> None:
    """Turn k is the chat template over earlier turns and answers, then the answer's ids."""
    from specdec.records import RequestRecord, TurnRecord
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(models.prepare(models.BASE_ALIAS)))
    answer = tokenizer.encode("Paris.", add_special_tokens=False)
    turns = tuple(
        TurnRecord(prompt=q, output="Paris.", prompt_tokens=0, output_tokens=len(answer),
                   ttft_s=0.0, decode_s=0.0, output_token_ids=tuple(answer))
        for q in ("Capital of France?", "And again?")
    )
    sequences = build_sequences([RequestRecord("q1", "geo", turns)], tokenizer, 1024, set())
    assert [s.id for s in sequences] == ["q1#0", "q1#1"]
    first, second = sequences
    assert list(first.tokens[first.answer_start:]) == answer
    prompt = tokenizer.decode(list(second.tokens[: second.answer_start]))
    assert "Capital of France?" in prompt
    assert "Paris." in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    short = build_sequences([RequestRecord("q1", "geo", turns)], tokenizer, 10, set())
    assert all(len(s.tokens) == 10 for s in short)
    assert list(short[0].tokens[short[0].answer_start:]) == answer


PROMPTS = [
    "What is the capital of France?",
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is two plus two?",
    "Give a synonym for happy.",
    "List the days of the week.",
    "What do bees make?",
    "Translate 'thank you' into French.",
]


def train_tiny_head(tmp_path: Path, *extra: str) -> Path:
    """Run ``specdec train eagle`` (plus ``extra``) on PROMPTS with tiny budgets; the head."""
    train = tmp_path / "train.jsonl"
    train.write_bytes(b"\n".join(orjson.dumps({"prompt": p, "id": f"t{i}"})
                                 for i, p in enumerate(PROMPTS)) + b"\n")
    held = tmp_path / "held.jsonl"
    held.write_bytes(b"\n".join(orjson.dumps({"prompt": p, "id": f"h{i}"}) for i, p in
                                enumerate(["What is the capital of Italy?",
                                           "Name three animals."])) + b"\n")
    head = tmp_path / "head"
    result = run_cli(
        "specdec", "train", "eagle", *extra, "--prompts", str(train), "--no-sample",
        "--eval-prompts", str(held), "--output", str(head), "--max-tokens", "24",
        "--max-steps", "4", "--batch-tokens", "512", "--val-fraction", "0.2",
        "--set", "engine.enforce_eager=true",
        "--set", "engine.extra.kv_cache_memory_bytes=1073741824", "--set", "engine.dtype=float32",
        "--eval-strategies", "eagle", "--eval-max-tokens", "24",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return head


@pytest.mark.engine
def test_train_eagle_end_to_end(tmp_path: Path) -> None:
    """Generation, hidden states, four steps, save, then vLLM drafts with the head."""
    head = train_tiny_head(tmp_path)
    from safetensors import safe_open

    from specdec_train.save import HEAD_TENSORS

    with safe_open(str(head / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(HEAD_TENSORS)
    assert _config(head)["num_hidden_layers"] == 1
    card = orjson.loads((head / "training.json").read_bytes())
    assert card["training"]["steps"] == 4
    assert card["data"]["answers"] == len(PROMPTS)
    assert 200 < card["data"]["tokens"] + card["data"]["val_tokens"] < 1000
    rows = {r["strategy"]: r for r in card["evaluation"]["strategies"]}
    assert set(rows) == {"baseline", "eagle"}
    assert rows["eagle"]["num_drafts"] > 0
    assert rows["eagle"]["lossless"] is True
    assert (head / "evaluation" / "report.md").is_file()
    work = tmp_path / "head.partial"
    metrics = orjson.loads((work / "eval" / "eagle" / "metrics.json").read_bytes())
    assert metrics["summary"]["engine_spec"]["num_drafts"] > 0
    assert not (work / "features").exists()
    assert "Not measured" not in (head / "README.md").read_text()
