"""Multi-process training on CPU: gathered objective, accelerate launch, DeepSpeed ZeRO-2/3 (slow).

Every test starts 2 processes (gloo) in a subprocess, with a time limit, and prints the subprocess
output when it fails. Launchers on a machine without GPUs:

- ``torchrun --standalone --nproc_per_node 2``.
- ``accelerate launch --multi_gpu --num_processes 2`` plus the training argument ``--use_cpu``.
  ``--cpu`` would start ONE process; ``--multi_gpu`` without ``--use_cpu`` starts two processes
  that each train alone (accelerate finds no backend: world size 1 in both).
- DeepSpeed: see ``tests/_deepspeed_worker.py`` for what it needs on CPU, and
  ``hf_counterfactual/integrations/deepspeed.py`` for the 0-dim parameter bug the library patches. Its ops are JIT-built once (shm_comm, ~2 min cold) into
  ``TORCH_EXTENSIONS_DIR``, by default ``.cache/torch_extensions`` in the repository (gitignored).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dummy_components import save_tiny_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ACCELERATE = [
    sys.executable, "-m", "accelerate.commands.launch",
    "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--main_process_port", "0",
    "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


def run_command(cmd: list[str], env: dict[str, str], timeout: int = TIMEOUT) -> str:
    """Runs ``cmd`` in the repository; returns its output, or fails the test showing it."""
    shown = " ".join(cmd)
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        output = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"timed out after {timeout} s: {shown}\n--- output ---\n{output[-20000:]}")
    if proc.returncode != 0:
        pytest.fail(f"exit code {proc.returncode}: {shown}\n--- output ---\n{proc.stdout[-20000:]}")
    return proc.stdout


def result_line(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert len(lines) == 1, f"expected one RESULT line (rank 0 only), got {len(lines)}\n{output[-5000:]}"
    return json.loads(lines[0][len("RESULT ") :])


def load_checkpoint(path: Path):
    from transformers import AutoProcessor, CLIPModel

    model, processor = CLIPModel.from_pretrained(path), AutoProcessor.from_pretrained(path)
    state = model.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    assert state["logit_scale"].shape == ()
    return model, processor


# ----------------------------------------------------------------------------- a. gathered objective


def test_gathered_objective_matches_one_process(subprocess_env):
    """Each term: DDP-averaged gradient of local rows x gathered columns == one-process gradient."""
    output = run_command(TORCHRUN + ["tests/_distributed_worker.py"], subprocess_env)
    checks = [line for line in output.splitlines() if line.startswith(("ok ", "FAIL "))]
    assert not [line for line in checks if line.startswith("FAIL")], output
    # 3 collective checks + 3 batches x (each term, and all together) x (loss, gradients)
    # + 2 content-key checks (gathered keys, masking changes the loss)
    from hf_counterfactual.objectives import TERMS

    dual_encoder_terms = [name for name, term in TERMS.items() if term.needs != "generative" and not term.reconstruction]
    assert len(checks) == 3 + 3 * (len(dual_encoder_terms) + 1) * 2 + 2, output


# ----------------------------------------------------------------------------- b. accelerate launch


def test_hf_cf_train_accelerate_two_processes(subprocess_env, tmp_path):
    output_dir = tmp_path / "cf-clip"
    output = run_command(
        ACCELERATE
        + [
            "-m", "hf_counterfactual.cli", "train",  # the installed command, as the README launches it
            "--use_cpu",
            "--num_train_scenes", "64",
            "--num_test_scenes", "16",
            "--max_steps", "3",
            "--pretrain_epochs", "1",
            "--per_device_train_batch_size", "8",
            "--logging_steps", "1",
            "--log_level", "info",
            "--output_dir", str(output_dir),
            "--cache_dir", str(tmp_path / "datasets"),
        ],  # fmt: skip
        subprocess_env,
    )
    # Two processes in ONE run: the global batch spans both, and only rank 0 evaluates and logs.
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in output, output[-5000:]
    # One table for the test split and one for the held-out rendering style, from rank 0 only.
    assert output.count("Text / image / group score") == 2, output[-5000:]
    assert output.count("'loss/grouping'") == 3, output[-5000:]  # the default objective
    model, processor = load_checkpoint(output_dir)
    assert len(processor.tokenizer) == model.config.text_config.vocab_size


# ----------------------------------------------------------------------------- c. DeepSpeed


def deepspeed_worker(config, model_dir, output_dir, env, *extra: str) -> dict:
    """The RESULT of ``tests/_deepspeed_worker.py`` on 2 processes (``config`` ``none``: plain DDP)."""
    return result_line(run_command(TORCHRUN + ["tests/_deepspeed_worker.py", str(config), str(model_dir), str(output_dir), *extra], env))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return Path(save_tiny_model(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="module")
def ddp_reference(tiny_checkpoint, subprocess_env, tmp_path_factory) -> tuple[dict, Path]:
    """The same steps without DeepSpeed (plain DDP on 2 processes)."""
    output_dir = tmp_path_factory.mktemp("ddp")
    result = deepspeed_worker("none", tiny_checkpoint, output_dir, subprocess_env)
    assert result["world_size"] == 2 and not result["deepspeed_enabled"], result
    return result, output_dir


@pytest.fixture(scope="module")
def deepspeed_installed():
    pytest.importorskip("deepspeed")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_ddp(deepspeed_installed, stage, tiny_checkpoint, ddp_reference, subprocess_env, tmp_path):
    reference, reference_dir = ddp_reference
    from hf_counterfactual.commands.train import shipped_deepspeed_config

    config = shipped_deepspeed_config(f"zero{stage}")  # what --deepspeed zero2 / zero3 names
    output_dir = tmp_path / f"zero{stage}"
    result = deepspeed_worker(config, tiny_checkpoint, output_dir, subprocess_env)
    assert result["deepspeed_enabled"] and result["zero_stage"] == stage, result
    assert result["world_size"] == result["dp_world_size"] == 2 and result["train_batch_size"] == 16, result
    assert len(result["losses"]) == 3
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(reference["losses"]), rtol=1e-4, atol=1e-5)

    # save_model wrote a plain checkpoint (ZeRO-3: gathered 16-bit weights, here fp32) with the DDP weights.
    model, _ = load_checkpoint(output_dir)
    expected, _ = load_checkpoint(reference_dir)
    assert_same_weights(model.state_dict(), expected.state_dict())


def assert_same_weights(actual: dict, expected: dict, atol: float = 1e-5) -> None:
    """Two runs' trained weights are equal (to float rounding, which Adam's normalisation amplifies
    where a gradient is near 0), key biases aside."""
    for name, value in actual.items():
        if name.endswith("k_proj.bias"):
            # Softmax ignores key biases: their gradient is rounding noise, which Adam amplifies.
            continue
        torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=atol, msg=lambda m: f"{name}: {m}")


def test_llava_trains_across_processes_like_one_process(subprocess_env, tmp_path):
    """Generative VLM under DDP: one forward per step (recorded pairs), replicas in sync, the same step as one process."""
    output = run_command(TORCHRUN + ["tests/_vlm_ddp_worker.py", str(tmp_path / "out")], subprocess_env)
    checks = [line for line in output.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert len(checks) == 2 and not [line for line in checks if line.startswith("FAIL")], output[-5000:]


@pytest.fixture(scope="module")
def tiny_llava_checkpoint(tmp_path_factory) -> Path:
    from hf_counterfactual.tiny_models import build_tiny_llava

    return Path(save_tiny_model(tmp_path_factory.mktemp("tiny-llava"), build_tiny_llava))


@pytest.fixture(scope="module")
def llava_ddp_reference(tiny_llava_checkpoint, subprocess_env, tmp_path_factory) -> tuple[dict, Path]:
    """The tiny LLaVA's steps without DeepSpeed (plain DDP on 2 processes)."""
    output_dir = tmp_path_factory.mktemp("llava-ddp")
    return deepspeed_worker("none", tiny_llava_checkpoint, output_dir, subprocess_env), output_dir


def test_read_clip_under_deepspeed_zero3_matches_ddp(deepspeed_installed, tiny_checkpoint, subprocess_env, tmp_path):
    """READ-CLIP's wrapper (CLIP + frozen T5 + projection) is one model to ZeRO-3: DDP's losses, and
    save_model writes DDP's CLIP alone, a plain CLIPModel."""
    from transformers import CLIPModel

    from hf_counterfactual.commands.train import shipped_deepspeed_config
    from hf_counterfactual.scenes import SCENE_VOCABULARY
    from hf_counterfactual.tiny_models import build_tiny_t5

    decoder, tokenizer = build_tiny_t5(SCENE_VOCABULARY, seed=1)
    decoder.save_pretrained(tmp_path / "decoder")
    tokenizer.save_pretrained(tmp_path / "decoder")
    results = {
        name: deepspeed_worker(config, tiny_checkpoint, tmp_path / name, subprocess_env, f"read={tmp_path / 'decoder'}")
        for name, config in (("ddp", "none"), ("zero3", shipped_deepspeed_config("zero3")))
    }
    assert results["zero3"]["zero_stage"] == 3 and len(results["zero3"]["losses"]) == 3, results["zero3"]
    torch.testing.assert_close(torch.tensor(results["zero3"]["losses"]), torch.tensor(results["ddp"]["losses"]), rtol=1e-4, atol=1e-5)
    saved = {name: CLIPModel.from_pretrained(tmp_path / name, output_loading_info=True) for name in results}
    assert not any(saved["zero3"][1].values()), saved["zero3"][1]  # no missing or unexpected keys: a CLIP, not the wrapper
    # (1 weight in 16k was 1.9e-5 off: the decoder's gradient adds rounding, and Adam divides by the gradient's size)
    assert_same_weights(saved["zero3"][0].state_dict(), saved["ddp"][0].state_dict(), atol=1e-4)


@pytest.mark.parametrize("stage", [2, 3])
def test_llava_under_deepspeed_zero_matches_ddp(deepspeed_installed, stage, tiny_llava_checkpoint, llava_ddp_reference, subprocess_env, tmp_path):
    """ZeRO-3 partitions LLaVA's parameters; the image features are read inside the step's forward hooks."""
    from transformers import LlavaForConditionalGeneration

    from hf_counterfactual.commands.train import shipped_deepspeed_config

    reference, reference_dir = llava_ddp_reference
    config = shipped_deepspeed_config(f"zero{stage}")
    result = deepspeed_worker(config, tiny_llava_checkpoint, tmp_path, subprocess_env)
    assert result["deepspeed_enabled"] and result["zero_stage"] == stage, result
    assert len(result["losses"]) == 3
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(reference["losses"]), rtol=1e-4, atol=1e-5)
    saved = LlavaForConditionalGeneration.from_pretrained(tmp_path).state_dict()
    expected = LlavaForConditionalGeneration.from_pretrained(reference_dir).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(saved[key], value, rtol=1e-4, atol=1e-5)


def test_llava_lora_under_deepspeed_zero3_matches_ddp(deepspeed_installed, tiny_llava_checkpoint, subprocess_env, tmp_path):
    """LoRA adapters on a ZeRO-3-partitioned LLaVA: DDP's losses and adapter, saved for PeftModel.from_pretrained."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import LlavaForConditionalGeneration

    from hf_counterfactual.commands.train import shipped_deepspeed_config

    results, adapters = {}, {}
    for name, config in (("ddp", "none"), ("zero3", shipped_deepspeed_config("zero3"))):
        results[name] = deepspeed_worker(config, tiny_llava_checkpoint, tmp_path / name, subprocess_env, "lora")
        adapters[name] = load_file(tmp_path / name / "adapter_model.safetensors")
    assert results["zero3"]["zero_stage"] == 3 and len(results["zero3"]["losses"]) == 3, results["zero3"]
    torch.testing.assert_close(torch.tensor(results["zero3"]["losses"]), torch.tensor(results["ddp"]["losses"]), rtol=1e-4, atol=1e-5)
    assert adapters["zero3"].keys() == adapters["ddp"].keys()
    assert max(v.abs().max().item() for k, v in adapters["ddp"].items() if "lora_B" in k) > 1e-4  # trained (B starts at 0)
    for key, value in adapters["ddp"].items():
        torch.testing.assert_close(adapters["zero3"][key], value, rtol=1e-3, atol=1e-6, msg=lambda m: f"{key}: {m}")
    loaded = PeftModel.from_pretrained(LlavaForConditionalGeneration.from_pretrained(tiny_llava_checkpoint), tmp_path / "zero3")
    assert any("lora_B" in name for name, _ in loaded.named_parameters())
