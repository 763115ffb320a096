#!/usr/bin/env python
"""Why does the tiny LLaVA score 0% on object edits and ~80% on relation edits before any
counterfactual training? Diagnostics of the ``loglik_mean`` scores, per edit kind.

On the procedural test split (the one ``hf-cf train --model_type llava`` reports) it prints:

1. tokenisation: out-of-vocabulary words of every factual and counterfactual caption, whether
   shape words get distinct ids, lower-casing;
2. pre-processing: mean absolute pixel difference between the factual and the edited image, as
   rendered (0-255) and after the LLaVA image processor (normalised units);
3. scores: text / image / group score, ties (exact and within 1e-6) on the text side
   S(Ia,Ta) vs S(Ia,Tcf) and the image side S(Ia,Ta) vs S(Icf,Ta), and the size of the
   image-text interaction ``S(Ia,Ta) - S(Ia,Tcf) - S(Icf,Ta) + S(Icf,Tcf)`` (the only part of the
   scores that can win a group) next to the text prior and the image offset (the additive parts,
   which a strict score cannot win on); split by whether the edit removes the test scene's held-out
   colour-shape composition from the caption;
4. ablations: the same scores with the image features zeroed (the language model's prior), with
   the 2-D patch grid transposed before it is spliced in (rows become columns in the language
   model's sequence), with one language-model position for all image tokens (no order among them),
   and a prior-corrected score ``S(I,T) - S(blank,T)``;
5. linear probes (torch logistic regression) of the shape and colour of single-object scenes from
   the pixels, the vision tower's selected layer, the projected features LLaVA splices in, and the
   language model's hidden state at the position that predicts the word; and the model's own
   read-out (argmax over the shape / colour words) with the image and with zeroed features.

Without ``--model_name_or_path`` it builds the tiny LLaVA and its captioning-loss pre-training
exactly as ``hf-cf train --model_type llava`` does (the "before" model), cached in
``<output_dir>/pretrained-start`` (shared with ``hf-cf train --model_type llava --output_dir``)::

    OMP_NUM_THREADS=1 python benchmarks/probe_vlm_edits.py     # ~35 s on the 2-core machine, pre-training included
    OMP_NUM_THREADS=1 python benchmarks/probe_vlm_edits.py --pretrain_epochs 8 --output_dir outputs/cf-llava-tiny-8
    OMP_NUM_THREADS=1 python benchmarks/probe_vlm_edits.py --model_name_or_path outputs/cf-llava-tiny   # a fine-tuned one

(``OMP_NUM_THREADS=1``: with torch's default 2 threads and any other process on the 2 cores, a step
of the tiny LLaVA took 2-5 s instead of 0.05 s.)
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch

from linear_probe import probe_accuracy  # benchmarks/linear_probe.py

from hf_counterfactual.benchmarks import counterfactual_records_benchmark
from hf_counterfactual.benchmarks.core import score_benchmark
from hf_counterfactual.scenes import COLOURS, DEFAULT_HELDOUT_PAIRS, SHAPES, describe, render_scene, sample_scene, sample_style
from hf_counterfactual.vlm_scoring import CAPTION_QUESTION, VLMScorer

HELDOUT_BIGRAMS = {f"{c} {s}" for c, s in DEFAULT_HELDOUT_PAIRS} | {f"{c} {s}s" for c, s in DEFAULT_HELDOUT_PAIRS}


def heldout_count(caption: str) -> int:
    words = caption.split()
    return sum(f"{a} {b}" in HELDOUT_BIGRAMS for a, b in zip(words, words[1:]))


def load(args):
    """(model, processor, test records) as hf-cf train builds them."""
    from transformers import set_seed

    from hf_counterfactual.commands.data import select_split
    from hf_counterfactual.commands.train import load_data, load_model, parse_args
    from hf_counterfactual.features import defer_image_decoding

    argv = ["--model_type", "llava", "--output_dir", args.output_dir, "--image_size", str(args.image_size),
            "--num_train_scenes", str(args.num_train_scenes), "--num_test_scenes", str(args.num_test_scenes)]  # fmt: skip
    if args.pretrain_epochs is not None:
        argv += ["--pretrain_epochs", str(args.pretrain_epochs)]
    model_args, data_args, training_args = parse_args(argv)
    set_seed(training_args.seed)
    raw = load_data(data_args)
    test = select_split(raw, "test", "--test_split")
    if args.model_name_or_path:
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.model_name_or_path)
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
    else:
        train = defer_image_decoding(select_split(raw, "train", "--train_split"))
        model, processor = load_model(model_args, training_args, train)
    return model.eval(), processor, test


def pct(x) -> str:
    return f"{100 * float(np.mean(x)):.1f}" if np.size(x) else "-"


def outcomes(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strict text and image wins of grids ``[n, image (a, cf), text (a, cf)]``."""
    text = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    image = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    return text, image


def scores(model, processor, bench, features=None, forward=None) -> np.ndarray:
    """The benchmark's grids, with ``features(f)`` applied to each image's spliced features and
    ``forward`` in place of the language-model forward (ablations)."""
    scorer = VLMScorer(model, processor, score="loglik_mean")
    if features is not None:
        own = scorer.image_features
        scorer.image_features = lambda images: [features(f) for f in own(images)]
    if forward is not None:
        scorer.forward_model = forward
    return np.stack(score_benchmark(scorer, bench))


def section_tokenisation(processor, test) -> None:
    tok = processor.tokenizer
    words = {w for r in test for t in [r["caption"], *(cf["caption"] for cf in r["counterfactuals"])] for w in t.split()}
    oov = sorted(w for w in words if tok.convert_tokens_to_ids(w) == tok.unk_token_id)
    ids = {s: tok(s, add_special_tokens=False)["input_ids"] for s in [*SHAPES, *(s + "s" for s in SHAPES)]}
    print("\n## 1. Tokenisation")
    print(f"vocabulary {len(tok)} tokens; caption words {len(words)}, out of vocabulary: {oov or 'none'}")
    print(f"shape word ids: {ids}; 'Circle' -> {tok('Circle', add_special_tokens=False)['input_ids']} (lower-cased)")


def section_pixels(processor, bench, kinds) -> None:
    rendered, processed = {}, {}
    for e in bench.examples:
        a, b = bench.load_image(e.images[0]), bench.load_image(e.images[1])
        pa, pb = processor.image_processor([a, b], return_tensors="pt")["pixel_values"]
        rendered.setdefault(e.subset, []).append(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())
        processed.setdefault(e.subset, []).append(float((pa - pb).abs().mean()))
    print("\n## 2. Pixel difference factual vs edited image")
    print("| edit | n | rendered (0-255) | after image processor | pairs identical after it |\n|---|---|---|---|---|")
    for k in sorted(rendered):
        print(f"| {k} | {len(rendered[k])} | {np.mean(rendered[k]):.2f} | {np.mean(processed[k]):.4f} | {np.mean(np.array(processed[k]) == 0):.0%} |")


def section_scores(s, blank, kinds, heldout) -> None:
    text, image = outcomes(s)
    inter = s[:, 0, 0] - s[:, 0, 1] - s[:, 1, 0] + s[:, 1, 1]
    prior = (s[:, 0, 0] + s[:, 1, 0] - s[:, 0, 1] - s[:, 1, 1]) / 2
    offset = (s[:, 0, 0] + s[:, 0, 1] - s[:, 1, 0] - s[:, 1, 1]) / 2
    tie_t, tie_i = np.abs(s[:, 0, 0] - s[:, 0, 1]), np.abs(s[:, 0, 0] - s[:, 1, 0])
    blank_prefers = blank[:, 0, 0] > blank[:, 0, 1]
    print("\n## 3. Scores (loglik_mean), %")
    print("| edit | n | text | image | group | ties text ==/1e-6 | ties image ==/1e-6 | S(Ia,Ta)>S(Ia,Tcf) | S(Icf,Tcf)>S(Icf,Ta) "
          "| blank prefers Ta | mean abs interaction | mean abs text prior | mean abs image offset |")
    print("|---" * 13 + "|")
    for k in sorted(set(kinds)):
        m = kinds == k
        print(f"| {k} | {m.sum()} | {pct(text[m])} | {pct(image[m])} | {pct((text & image)[m])} | {pct(tie_t[m] == 0)}/{pct(tie_t[m] <= 1e-6)} "
              f"| {pct(tie_i[m] == 0)}/{pct(tie_i[m] <= 1e-6)} | {pct(s[m, 0, 0] > s[m, 0, 1])} | {pct(s[m, 1, 1] > s[m, 1, 0])} "
              f"| {pct(blank_prefers[m])} | {np.abs(inter[m]).mean():.4f} | {np.abs(prior[m]).mean():.4f} | {np.abs(offset[m]).mean():.4f} |")
    print("\nBy the held-out compositions (every test factual caption holds one) in Ta vs Tcf:")
    print("| edit | Tcf vs Ta | n | text | image | group | S(Ia,Ta)>S(Ia,Tcf) | blank prefers Ta |\n|---|---|---|---|---|---|---|---|")
    for k in ("attribute", "object"):
        for name, sel in (("fewer", heldout[:, 1] < heldout[:, 0]), ("as many", heldout[:, 1] == heldout[:, 0]), ("more", heldout[:, 1] > heldout[:, 0])):
            m = (kinds == k) & sel
            if m.any():
                print(f"| {k} | {name} | {m.sum()} | {pct(text[m])} | {pct(image[m])} | {pct((text & image)[m])} | {pct(s[m, 0, 0] > s[m, 0, 1])} | {pct(blank_prefers[m])} |")


def section_ablations(rows, kinds) -> None:
    print("\n## 4. Ablations: text / image / group score (%) per edit kind")
    names = sorted(set(kinds))
    print("| scores | " + " | ".join(names) + " |\n|---" + "|---" * len(names) + "|")
    for name, s in rows:
        text, image = outcomes(s)
        print(f"| {name} | " + " | ".join(f"{pct(text[kinds == k])} / {pct(image[kinds == k])} / {pct((text & image)[kinds == k])}" for k in names) + " |")


def single_object_scenes(count: int, seed: int):
    rng, out = random.Random(seed), []
    while len(out) < count:
        scene = sample_scene(rng)
        if scene.layout == "single":
            out.append((scene, sample_style(rng)))
    return out


@torch.no_grad()
def single_object_representations(model, processor, items, blank: bool = False) -> dict[str, torch.Tensor]:
    """Representations of single-object scenes, with the true caption teacher-forced."""
    tok, scorer = processor.tokenizer, VLMScorer(model, processor, score="loglik_mean")
    pixel_values = processor.image_processor([render_scene(s, 64, st) for s, st in items], return_tensors="pt")["pixel_values"]
    vision = model.model.vision_tower(pixel_values, output_hidden_states=True)
    selected = vision.hidden_states[model.config.vision_feature_layer][:, 1:]  # "default": the CLS token dropped
    features = model.model.multi_modal_projector(selected)
    if blank:
        features = torch.zeros_like(features)
    prompt = []
    for t in scorer.prompt(CAPTION_QUESTION):
        prompt += [t] * features.shape[1] if t == scorer.image_token_id else [t]
    ids = torch.tensor([prompt + tok(describe(s), add_special_tokens=False)["input_ids"] for s, _ in items])  # all 4 tokens long
    embeds = model.get_input_embeddings()(ids)
    embeds[ids == scorer.image_token_id] = features.reshape(-1, features.shape[-1])
    hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
    logits = model.lm_head(hidden)
    first = len(prompt) - 1  # predicts "a"; +1 the size, +2 the colour, +3 the shape
    shape_ids = [tok.convert_tokens_to_ids(w) for w in SHAPES]
    colour_ids = [tok.convert_tokens_to_ids(w) for w in COLOURS]
    return {
        "pixels": pixel_values.flatten(1),
        "vision tower, selected layer (patches)": selected.flatten(1),
        "projected features (spliced in)": features.flatten(1),
        "projected features, mean over patches": features.mean(1),
        "LM hidden state predicting the word": (hidden[:, first + 3], hidden[:, first + 2]),
        "readout": (logits[:, first + 3][:, shape_ids].argmax(1), logits[:, first + 2][:, colour_ids].argmax(1)),
    }


def section_probes(model, processor, count: int) -> None:
    train_items, test_items = single_object_scenes(count, seed=1), single_object_scenes(count // 2, seed=2)

    def labels(items):
        return (torch.tensor([SHAPES.index(s.objects[0].shape) for s, _ in items]),
                torch.tensor([list(COLOURS).index(s.objects[0].colour) for s, _ in items]))  # fmt: skip

    (train_shape, train_colour), (test_shape, test_colour) = labels(train_items), labels(test_items)
    train = single_object_representations(model, processor, train_items)
    test = single_object_representations(model, processor, test_items)
    blank = single_object_representations(model, processor, test_items, blank=True)
    print(f"\n## 5. Single-object scenes ({len(train_items)} probe-train, {len(test_items)} probe-test, train styles): accuracy %")
    print(f"| representation | shape (chance {100 / len(SHAPES):.0f}) | colour (chance {100 / len(COLOURS):.0f}) |\n|---|---|---|")
    for name in list(train)[:-1]:
        if isinstance(train[name], tuple):
            shape = probe_accuracy(train[name][0], train_shape, test[name][0], test_shape, len(SHAPES), steps=200)
            colour = probe_accuracy(train[name][1], train_colour, test[name][1], test_colour, len(COLOURS), steps=200)
        else:
            shape = probe_accuracy(train[name], train_shape, test[name], test_shape, len(SHAPES), steps=200)
            colour = probe_accuracy(train[name], train_colour, test[name], test_colour, len(COLOURS), steps=200)
        print(f"| probe: {name} | {100 * shape:.1f} | {100 * colour:.1f} |")
    heldout = torch.tensor([(s.objects[0].colour, s.objects[0].shape) in DEFAULT_HELDOUT_PAIRS for s, _ in test_items])
    for name, reps in (("model readout, image", test), ("model readout, features zeroed", blank)):
        shape_ok, colour_ok = reps["readout"][0] == test_shape, reps["readout"][1] == test_colour
        print(f"| {name} | {pct(shape_ok.numpy())} (held-out pairs {pct(shape_ok[heldout].numpy())}, n={int(heldout.sum())}) | {pct(colour_ok.numpy())} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="A saved LLaVA; default: the tiny pre-trained start of hf-cf train.")
    parser.add_argument("--output_dir", default="outputs/cf-llava-tiny", help="Where the pre-trained start is cached (<output_dir>/pretrained-start).")
    parser.add_argument("--image_size", type=int, default=32, help="The tiny model's image size (hf-cf train --image_size).")
    parser.add_argument("--pretrain_epochs", type=float, default=None, help="hf-cf train --pretrain_epochs (default: its own, 24 for the tiny LLaVA).")
    parser.add_argument("--num_train_scenes", type=int, default=400)
    parser.add_argument("--num_test_scenes", type=int, default=100)
    parser.add_argument("--num_probe_scenes", type=int, default=400, help="Probe-train single-object scenes (half as many probe-test); 0: no probes.")
    args = parser.parse_args()
    torch.manual_seed(0)
    start = time.time()
    model, processor, test = load(args)
    bench = counterfactual_records_benchmark(test, name="test split")
    kinds = np.array([e.subset for e in bench.examples])
    heldout = np.array([[heldout_count(t) for t in e.texts] for e in bench.examples])

    section_tokenisation(processor, test)
    section_pixels(processor, bench, kinds)
    s = scores(model, processor, bench)
    blank = scores(model, processor, bench, features=torch.zeros_like)
    section_scores(s, blank, kinds, heldout)

    def transposed(f):
        side = int(round(len(f) ** 0.5))
        return f.reshape(side, side, -1).transpose(0, 1).reshape(side * side, -1)

    image_token = model.config.image_token_index

    def one_position(input_ids, attention_mask, position_ids, **kwargs):
        position_ids = position_ids.clone()
        for r in range(len(position_ids)):
            image = input_ids[r] == image_token
            position_ids[r, image] = position_ids[r, image].float().mean().round().long()
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)

    section_ablations(
        [
            ("loglik_mean", s),
            ("image features zeroed", blank),
            ("patch grid transposed", scores(model, processor, bench, features=transposed)),
            ("one LM position for all image tokens", scores(model, processor, bench, forward=one_position)),
            ("prior-corrected: S(I,T) - S(zeroed,T)", s - blank[:, :1, :]),
        ],
        kinds,
    )
    if args.num_probe_scenes > 0:
        section_probes(model, processor, args.num_probe_scenes)
    print(f"\n({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
