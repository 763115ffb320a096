"""Tiny models built from configs: the offline default of the examples and the fixture of the tests.

CLIP (training, scoring, the image-text filter), a Stable Diffusion inpainting pipeline (diffusers'
``get_dummy_components`` recipe) and a GPT-2 causal LM (text editors), all randomly initialised.

Nothing here downloads anything. The tokenizer is a word-level ``tokenizers`` model over a closed
vocabulary (the procedural scenes' words), wrapped so that it saves and loads with the ordinary
``AutoProcessor.from_pretrained`` like any hub tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"


def build_word_level_tokenizer(words: Iterable[str], model_max_length: int = 32) -> PreTrainedTokenizerFast:
    """A lower-casing, whitespace-splitting word-level tokenizer that wraps each text in ``<bos> ... <eos>``."""
    vocab = {token: i for i, token in enumerate([PAD, UNK, BOS, EOS, *sorted(set(words))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        model_max_length=model_max_length,
    )


def tiny_clip_config(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    projection_dim: int = 64,
) -> CLIPConfig:
    """A CLIP config small enough to train on a laptop CPU in minutes.

    The text config takes its special token ids from ``tokenizer``: CLIP pools the text at the
    first ``eos_token_id``, and the default ids (49406/49407) would silently pool position 0.
    """
    common = dict(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=max(1, hidden_size // 32),
        projection_dim=projection_dim,
    )
    text_config = dict(
        common,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision_config = dict(common, image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=projection_dim)


def build_tiny_clip(words: Iterable[str], image_size: int = 32, seed: int = 0, **config_kwargs) -> tuple[CLIPModel, CLIPProcessor]:
    """A randomly initialised tiny ``CLIPModel`` and its ``CLIPProcessor`` for captions drawn from ``words``.

    Deterministic for a given ``seed``. The pair saves with ``save_pretrained`` and loads back with
    ``CLIPModel.from_pretrained`` / ``AutoProcessor.from_pretrained``.
    """
    tokenizer = build_word_level_tokenizer(words)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CLIPModel(tiny_clip_config(tokenizer, image_size=image_size, **config_kwargs))
    return model, processor


def build_tiny_causal_lm(words: Iterable[str], seed: int = 0, model_max_length: int = 512):
    """A randomly initialised 2-layer ``GPT2LMHeadModel`` and a word-level tokenizer over ``words``.

    It generates garbage, which is the point: the LLM stages must reject it, count it, and cache it.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = build_word_level_tokenizer(words, model_max_length=model_max_length)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=model_max_length,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config).eval()
    return model, tokenizer


def build_tiny_inpainting_pipeline(words: Iterable[str], seed: int = 0):
    """A tiny ``StableDiffusionInpaintPipeline`` (32x32 latents, so 64x64 images) from configs.

    The recipe of diffusers' own inpainting tests, with a local word-level tokenizer; progress bars off.
    """
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_word_level_tokenizer(words, model_max_length=77)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=32,
            in_channels=9,  # latents + masked-image latents + mask
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32,
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
            up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
            latent_channels=4,
            sample_size=128,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                hidden_size=32,
                intermediate_size=37,
                layer_norm_eps=1e-05,
                num_attention_heads=4,
                num_hidden_layers=2,
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
            )
        )
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
