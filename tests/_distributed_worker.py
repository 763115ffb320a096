"""Gradient equivalence of the gathered objective; run by ``tests/test_distributed.py`` as

    torchrun --standalone --nproc_per_node 2 tests/_distributed_worker.py

Every rank holds the same tiny CLIP (float64, so that only rounding separates the two computations)
and collates ITS share of one global batch of procedural records. For each loss term, and for all
of them together, it checks that

- the data-parallel gradient (each rank's gradient of its local-rows loss with gathered columns,
  all-reduced and divided by the world size, as DDP does) equals the gradient of the same objective
  computed in one process over the whole global batch with ``gather=False``;
- the mean over ranks of the local loss equals that single-process loss.

A third batch makes rank 1's records share content with rank 0's (a caption, a photo, a
counterfactual caption equal to a caption): the false-negative masks must then be built from content
keys gathered across processes, and the loss must differ from the unmasked one.

It also checks ``all_gather_no_grad`` on bool masks (gloo has no bool all_gather) and the rank
order of ``all_gather_with_grad``. Prints one line per check and exits non-zero on any failure.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from hf_counterfactual.collator import CounterfactualCollator
from hf_counterfactual.distributed import all_gather_no_grad, all_gather_with_grad, rank_and_world_size
from hf_counterfactual.objectives import TERMS, CounterfactualObjective
from hf_counterfactual.scenes import SCENE_VOCABULARY, generate_record
from hf_counterfactual.scoring import DualEncoderScores
from hf_counterfactual.tiny_models import build_tiny_clip

PER_RANK = 4  # records per rank
K = 4  # counterfactuals per record (= what each procedural record carries, so the collator picks all)
RTOL, ATOL = 1e-7, 1e-10  # float64


def loss_and_grads(model, objective, batch):
    model.zero_grad(set_to_none=True)
    outputs = model(
        pixel_values=batch["pixel_values"].double(), input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    )
    scores = DualEncoderScores.from_outputs(outputs)  # what CounterfactualTrainer.compute_loss uses
    loss = objective.total(objective(scores, batch))
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for n, p in model.named_parameters()}
    return loss.detach(), grads


def main() -> int:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = rank_and_world_size()
    failures: list[str] = []

    def check(ok: bool, message: str) -> None:
        if rank == 0:
            print(("ok   " if ok else "FAIL ") + message, flush=True)
        if not ok:
            failures.append(message)

    # all_gather_no_grad on bool masks, all_gather_with_grad rank order.
    mask = torch.tensor([rank == 0, True, False, rank == 1])
    gathered = all_gather_no_grad(mask)
    expected = torch.cat([torch.tensor([r == 0, True, False, r == 1]) for r in range(world)])
    check(gathered.dtype == torch.bool and torch.equal(gathered, expected), f"all_gather_no_grad(bool) -> {gathered.tolist()}")
    mask2d = torch.arange(6).view(3, 2).eq(rank)
    gathered2d = all_gather_no_grad(mask2d)
    check(
        gathered2d.shape == (3 * world, 2) and torch.equal(gathered2d, torch.cat([torch.arange(6).view(3, 2).eq(r) for r in range(world)])),
        "all_gather_no_grad(bool [3, 2])",
    )
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    gathered_x = all_gather_with_grad(x)
    (gathered_x * torch.arange(1, 2 * world + 1, dtype=x.dtype).unsqueeze(1)).sum().backward()
    # d/dx of sum_r sum_rows (row weight) * x_r, summed over every rank's loss: world * row weights of this rank.
    expected_grad = world * torch.arange(2 * rank + 1, 2 * rank + 3, dtype=x.dtype).unsqueeze(1).expand(2, 3)
    grad_ok = torch.allclose(x.grad, expected_grad)
    grad_ok_all = torch.tensor(int(grad_ok))
    dist.all_reduce(grad_ok_all)
    check(
        torch.equal(gathered_x.detach()[:, 0], torch.arange(1, world + 1, dtype=x.dtype).repeat_interleave(2))
        and int(grad_ok_all) == world,
        "all_gather_with_grad: rank order and summed gradient",
    )

    model, processor = build_tiny_clip(SCENE_VOCABULARY, image_size=32, seed=0)
    model = model.double().train()
    for p in model.parameters():  # identical start on every rank, as DDP ensures
        dist.broadcast(p.data, src=0)
    # One paraphrase each: the paraphrase term's pick is then the same in the local and the global collation.
    records = [generate_record(i, "train", seed=0, image_size=32) for i in range(PER_RANK * world)]
    records = [{**r, "paraphrases": r["paraphrases"][:1]} for r in records]
    # The same records with their last counterfactual text-only (no edited image): exercises the
    # masks (grouping's hard-negative captions, csd/fcd's missing images). Every rank holds as many
    # valid entries, so the mean of the local means is the global mean.
    text_only = [
        {**r, "counterfactuals": [*r["counterfactuals"][:-1], {**r["counterfactuals"][-1], "image": None}]} for r in records
    ]
    collator = CounterfactualCollator(processor, num_counterfactuals=K, counterfactual_fraction=1.0, use_paraphrases=True)
    # A CLIP: no caption likelihood; reconstruction is a local decoder loss (nothing gathered), tested in test_reconstruction.
    terms = [name for name, term in TERMS.items() if term.needs != "generative" and not term.reconstruction]
    cases = [(term, {term: 1.0}) for term in terms] + [("all", {term: 1.0 for term in terms})]
    duplicates = shared_across_ranks(records)
    for data_name, data in (("full", records), ("text-only cf", text_only), ("shared across ranks", duplicates)):
        local_batch = collator(data[rank * PER_RANK : (rank + 1) * PER_RANK])
        global_batch = collator(data)
        if rank == 0:
            print(
                f"[{data_name}] world={world}, local batch: {local_batch['pixel_values'].shape[0]} images, "
                f"{local_batch['input_ids'].shape[0]} texts; global batch: {global_batch['pixel_values'].shape[0]} images, "
                f"{global_batch['input_ids'].shape[0]} texts",
                flush=True,
            )
        for name, weights in cases:
            check_case(model, f"[{data_name}] {name}", weights, local_batch, global_batch, world, check)

    check_gathered_keys(model, collator, duplicates, world, check)

    dist.barrier()
    dist.destroy_process_group()
    if failures and rank == 0:
        print(f"{len(failures)} check(s) failed", flush=True)
    return 1 if failures else 0


def shared_across_ranks(records):
    """Rank 1's first three records share with rank 0's: the caption, the photo, a counterfactual caption
    equal to the caption (an edited image of which rank 0's caption is true)."""
    out = list(records)
    a, b = records[:PER_RANK], records[PER_RANK : 2 * PER_RANK]
    out[PER_RANK] = {**b[0], "caption": a[0]["caption"]}
    out[PER_RANK + 1] = {**b[1], "image": a[1]["image"].copy()}
    out[PER_RANK + 2] = {**b[2], "counterfactuals": [{**b[2]["counterfactuals"][0], "caption": a[2]["caption"]}, *b[2]["counterfactuals"][1:]]}
    return out


def check_gathered_keys(model, collator, data, world, check) -> None:
    """Gathered content keys of every pair are the one-process batch's; the masks change the loss."""
    rank = rank_and_world_size()[0]
    local, whole = collator(data[rank * PER_RANK : (rank + 1) * PER_RANK]), collator(data)

    def pair_keys(batch):
        return torch.stack([batch["text_key"][batch["text_index"]], batch["image_key"][batch["image_index"]]], dim=1)

    check(torch.equal(all_gather_no_grad(pair_keys(local)), pair_keys(whole)), "[shared across ranks] gathered pair keys == one-process keys")
    objective = CounterfactualObjective(weights={"align": 1.0}, gather=True)
    keyless = {name: value for name, value in local.items() if name not in ("text_key", "image_key")}
    masked, unmasked = loss_and_grads(model, objective, local)[0], loss_and_grads(model, objective, keyless)[0]
    dist.all_reduce(masked)
    dist.all_reduce(unmasked)
    check(not torch.allclose(masked, unmasked), f"[shared across ranks] align masked {masked.item() / world:.6f} != unmasked {unmasked.item() / world:.6f}")


def check_case(model, name, weights, local_batch, global_batch, world, check) -> None:
    distributed = CounterfactualObjective(weights=weights, gather=True)
    single = CounterfactualObjective(weights=weights, gather=False)

    loss, grads = loss_and_grads(model, distributed, local_batch)
    dist.all_reduce(loss)
    loss /= world
    for g in grads.values():
        dist.all_reduce(g)
        g /= world
    ref_loss, ref_grads = loss_and_grads(model, single, global_batch)

    check(torch.allclose(loss, ref_loss, rtol=RTOL, atol=ATOL), f"{name}: loss mean over ranks {loss.item():.10f} vs one process {ref_loss.item():.10f}")
    bad = [n for n in grads if not torch.allclose(grads[n], ref_grads[n], rtol=RTOL, atol=ATOL)]
    scale = max(g.abs().max().item() for g in ref_grads.values())
    err = max((grads[n] - ref_grads[n]).abs().max().item() for n in grads)
    nonzero = sum(bool(g.abs().max() > 0) for g in ref_grads.values())
    check(
        not bad and scale > 0,
        f"{name}: gradients of {len(grads)} parameters ({nonzero} non-zero), max |diff| {err:.2e} (max |grad| {scale:.2e})"
        + (f"; mismatched: {bad[:5]}" if bad else ""),
    )


if __name__ == "__main__":
    sys.exit(main())
