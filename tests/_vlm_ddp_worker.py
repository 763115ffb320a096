"""LLaVA training across processes; run by ``tests/test_distributed.py`` as

    torchrun --standalone --nproc_per_node 2 tests/_vlm_ddp_worker.py OUTPUT_DIR

Both ranks build the same tiny LLaVA and take one SGD step of ``CounterfactualTrainer`` (DDP, gloo)
on their halves of 4 procedural records, with the record-local terms and ``lm``. Checks, printed as
``ok`` / ``FAIL`` lines: the replicas hold the same weights after the step (gradients were
all-reduced), and rank 0's weights equal one process's SGD step on all 4 records at once.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from hf_counterfactual import CounterfactualCollator, CounterfactualTrainer, CounterfactualTrainingArguments
from hf_counterfactual.scenes import SCENE_VOCABULARY, generate_record
from hf_counterfactual.tiny_models import build_tiny_llava
from hf_counterfactual.vlm_scoring import VLMScorer, VLMScores

WEIGHTS = dict(objective="cf-vlm-lm", loss_weights={"local": 1.0})


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def main(output_dir: str) -> int:
    import datasets

    from hf_counterfactual.features import COUNTERFACTUAL_FEATURES

    records = [generate_record(i, "train", seed=0) for i in range(4)]
    dataset = datasets.Dataset.from_list(records, features=COUNTERFACTUAL_FEATURES)
    args = CounterfactualTrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=2, max_steps=1, optim="sgd", learning_rate=0.1, weight_decay=0.0,
        max_grad_norm=0.0, lr_scheduler_type="constant", train_sampling_strategy="sequential", num_counterfactuals=4,
        report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True, **WEIGHTS,
    )  # fmt: skip
    model, processor = build_tiny_llava(SCENE_VOCABULARY)
    trainer = CounterfactualTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)
    trainer.train()
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = flat(model)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    failures = 0
    same = all(torch.equal(gathered[0], other) for other in gathered[1:])
    if rank == 0:
        print(f"{'ok  ' if same else 'FAIL'} replicas equal after the step (world size {world})", flush=True)
        failures += not same
        reference, _ = build_tiny_llava(SCENE_VOCABULARY)
        optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
        batch = CounterfactualCollator(processor, num_counterfactuals=4)(records)
        objective = args.build_objective()
        loss = objective.total(objective(VLMScores(VLMScorer(reference, processor, score=args.vlm_score), batch["pixel_values"], batch["texts"]), batch))
        loss.backward()
        optimizer.step()
        gap = (flat(reference) - mine).abs().max().item()
        moved = (flat(reference) - flat(build_tiny_llava(SCENE_VOCABULARY)[0])).abs().max().item()
        good = gap < 1e-5 and moved > 1e-3
        print(f"{'ok  ' if good else 'FAIL'} DDP step = one-process step on all records (max gap {gap:.2e}, step moved {moved:.2e})", flush=True)
        failures += not good
    flags = torch.tensor([failures])
    dist.all_reduce(flags)
    return int(flags.item())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
