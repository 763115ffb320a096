"""Tiny models built from configs: the offline default of the examples and the fixture of the tests.

CLIP (training, scoring, the image-text filter), a Stable Diffusion inpainting pipeline (diffusers'
``get_dummy_components`` recipe), a GPT-2 causal LM (text editors) and a T5 (the reconstruction
decoder), all randomly initialised.

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


def _text_config(tokenizer: PreTrainedTokenizerFast, **fields) -> dict:
    """A CLIP-style text config dict sized for ``tokenizer``, with its special token ids.

    CLIP (and OWL, and Stable Diffusion's text encoder) pools the text at the first
    ``eos_token_id``: the default ids (49406/49407) would silently pool position 0.
    """
    return dict(
        fields,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def tiny_clip_config(
    tokenizer: PreTrainedTokenizerFast,
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    projection_dim: int = 64,
) -> CLIPConfig:
    """A CLIP config small enough to train on a laptop CPU in minutes; the text config takes its
    special token ids from ``tokenizer`` (see :func:`_text_config`)."""
    common = dict(
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=max(1, hidden_size // 32),
        projection_dim=projection_dim,
    )
    text_config = _text_config(tokenizer, **common)
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
        init_vit_position_embeddings(model)
    return model, processor


def build_tiny_siglip(words: Iterable[str], image_size: int = 32, seed: int = 0, hidden_size: int = 64):
    """A randomly initialised tiny ``SiglipModel`` and its ``SiglipProcessor``, with SigLIP's own
    initial scale 10 and bias -10 (``log(10)`` and ``-10``, as ``SiglipModel`` initialises a
    checkpoint-free model in the original code). Saves and loads with ``from_pretrained``."""
    import math

    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel, SiglipProcessor

    tokenizer = build_word_level_tokenizer(words)
    common = dict(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=2, num_attention_heads=max(1, hidden_size // 32))
    text_config = {k: v for k, v in _text_config(tokenizer, **common).items() if k != "projection_dim"}
    config = SiglipConfig(text_config=text_config, vision_config=dict(common, image_size=image_size, patch_size=8))
    processor = SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": image_size, "width": image_size}), tokenizer=tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SiglipModel(config)
        # transformers already draws SigLIP's positions at width**-0.5, but its lecun-normal patch
        # projection gives twice CLIP's patch content: at that std the pooled embedding stays
        # order-blind (left/right, above/below), so the positions are drawn twice as large.
        init_vit_position_embeddings(model, std=2 * hidden_size**-0.5)
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-10.0)
    return model, processor


def init_vit_position_embeddings(model: torch.nn.Module, std: float | None = None) -> list[str]:
    """Re-draws the position embeddings of every ViT patch embedding in ``model`` as the original
    recipe does (OpenAI CLIP: normal with std ``width ** -0.5``); returns the
    names of the modules it re-initialised.

    transformers initialises a model built from a config with std ``initializer_range`` (0.02), which
    is what a checkpoint overwrites anyway, but a model trained from its config keeps it. Next to the
    patch content (std ~0.3 after the patch projection) 0.02 is almost no signal: the class token
    then pools the patches as a bag and the image embedding of a scene and of its mirror image stay
    ~0.996 alike, so left/right and above/below are never learned (``benchmarks/probe_order.py``).

    A ViT patch embedding is recognised by its ``patch_embedding`` convolution beside a
    ``position_embedding`` table (CLIP, OWL-ViT, OWLv2, SigLIP and LLaVA's CLIP tower).

    Args:
        model: any module; its ViT embeddings are changed in place.
        std: the standard deviation; default ``embed_dim ** -0.5`` of each embedding module.
    """
    changed = []
    with torch.no_grad():
        for name, module in model.named_modules():
            patch, position = getattr(module, "patch_embedding", None), getattr(module, "position_embedding", None)
            if isinstance(patch, torch.nn.Conv2d) and isinstance(position, torch.nn.Embedding):
                position.weight.normal_(std=std if std is not None else position.embedding_dim**-0.5)
                changed.append(name)
    return changed


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


def build_tiny_t5(words: Iterable[str], seed: int = 0, d_model: int = 64, model_max_length: int = 32):
    """A randomly initialised 2+2-layer ``T5ForConditionalGeneration`` and a word-level tokenizer over
    ``words``: the reconstruction decoder's stand-in (READ-CLIP freezes a pretrained T5)."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = build_word_level_tokenizer(words, model_max_length=model_max_length)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,  # T5's convention
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config).eval()
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
                **_text_config(
                    tokenizer, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=2
                )
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


def _tiny_grounding_dino_detector(words: Iterable[str], image_size: int):
    """A tiny ``GroundingDinoForObjectDetection`` and its processor (see :func:`build_tiny_grounding`).

    Grounding DINO hard-codes BERT's ids of ``[CLS]``, ``[SEP]``, ``.`` and ``?`` (101, 102, 1012,
    1029) to split the prompt into phrases, so the word-level vocabulary puts them there and fills
    the ids below 1030 with unused tokens.
    """
    from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoProcessor, SwinConfig
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import GroundingDinoImageProcessorPil

    fixed = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}
    taken = set(fixed.values())
    vocab = {f"[unused{i}]": i for i in range(1030) if i not in taken}
    vocab.update(fixed)
    for word in sorted({w.lower() for w in words} - set(vocab)):
        vocab[word] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # splits "cat." into "cat" "."
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", fixed["[CLS]"]), ("[SEP]", fixed["[SEP]"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=32,
    )
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": image_size, "longest_edge": 2 * image_size})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(
            image_size=image_size,
            patch_size=4,
            embed_dim=8,
            depths=[1, 1],
            num_heads=[1, 1],
            window_size=2,
            out_features=["stage1", "stage2"],
        ),
        text_config=BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=tokenizer.model_max_length,
        ),
        d_model=32,  # the input projections' GroupNorm has 32 groups
        num_queries=10,
        encoder_layers=1,
        decoder_layers=2,  # the decoder's box heads are tied to layer 0: one layer leaves nothing to tie and raises
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=tokenizer.model_max_length,
    )
    return GroundingDinoForObjectDetection(config).eval(), processor


def _tiny_owl_detector(words: Iterable[str], image_size: int, patch_size: int, detector: str):
    """A tiny ``OwlViTForObjectDetection`` / ``Owlv2ForObjectDetection`` and its processor."""
    from transformers import (
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        Owlv2Processor,
        OwlViTConfig,
        OwlViTForObjectDetection,
        OwlViTImageProcessorPil,
        OwlViTProcessor,
    )

    classes = {
        "owlvit": (OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessorPil, OwlViTProcessor),
        "owlv2": (Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil, Owlv2Processor),
    }
    config_class, model_class, image_processor_class, processor_class = classes[detector]
    # OWL's processor pads every query to model_max_length ("max_length" padding): keep it short.
    tokenizer = build_word_level_tokenizer(words, model_max_length=16)
    image_processor = image_processor_class(
        size={"height": image_size, "width": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = processor_class(image_processor=image_processor, tokenizer=tokenizer)
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = config_class(
        text_config=_text_config(tokenizer, **common),
        vision_config=dict(common, image_size=image_size, patch_size=patch_size),
        projection_dim=32,
    )
    model = model_class(config).eval()
    init_vit_position_embeddings(model)  # the same weak default as CLIP's (see the function)
    # OWL configs have no initializer_range, so transformers' generic init draws the detection heads'
    # Linear weights with std = initializer_factor = 1.0: the box head saturates (every box degenerate,
    # on the image border). Small heads keep boxes near OWL's per-patch prior, as a trained model has.
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.split(".")[0] in ("box_head", "class_head", "objectness_head") and isinstance(module, torch.nn.Linear):
                module.weight.normal_(std=0.02)
                module.bias.zero_()
    return model, processor


def build_tiny_grounding(words: Iterable[str], seed: int = 0, with_segmenter: bool = True, detector: str = "owlvit"):
    """A randomly initialised tiny zero-shot detector and SAM segmenter, the fixture of
    :class:`~hf_counterfactual.generation.grounding.GroundedSegmenter`.

    Returns ``(detector, detector_processor, segmenter, segmenter_processor)``; the last two are None
    when ``with_segmenter`` is False. ``detector`` picks the detector:

    - "owlvit" (``OwlViTForObjectDetection``) or "owlv2" (``Owlv2ForObjectDetection``, which pads
      images to a square): 32x32 pixels, 8-pixel patches, so 16 boxes per image; one text query per
      phrase over a word-level tokenizer of ``words``;
    - "grounding-dino" (``GroundingDinoForObjectDetection``): a 2-stage Swin backbone, 10 queries, a
      1-layer BERT over a word-level vocabulary holding BERT's special ids.

    SAM works at 32x32 pixels (4x4 image embeddings, 16x16 low-resolution masks). Deterministic for a
    given ``seed``; nothing is downloaded.
    """
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    if detector not in ("owlvit", "owlv2", "grounding-dino"):
        raise ValueError(f"detector must be 'owlvit', 'owlv2' or 'grounding-dino', got {detector!r}")
    image_size, patch_size = 32, 8
    segmenter = segmenter_processor = None
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if detector == "grounding-dino":
            detector_model, detector_processor = _tiny_grounding_dino_detector(words, image_size)
        else:
            detector_model, detector_processor = _tiny_owl_detector(words, image_size, patch_size, detector)
        if with_segmenter:
            sam_config = SamConfig(
                vision_config=dict(
                    hidden_size=32,
                    output_channels=16,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    image_size=image_size,
                    patch_size=patch_size,
                    window_size=2,
                    global_attn_indexes=[1],
                    num_pos_feats=8,  # output_channels // 2: the image-wide positional embedding
                    mlp_dim=64,
                ),
                prompt_encoder_config=dict(hidden_size=16, image_size=image_size, patch_size=patch_size, mask_input_channels=4),
                mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
            )
            segmenter = SamModel(sam_config).eval()
    if with_segmenter:
        # The processor's longest_edge and pad_size must equal the vision config's image_size.
        sam_image_processor = SamImageProcessorPil(
            size={"longest_edge": image_size},
            pad_size={"height": image_size, "width": image_size},
            mask_size={"longest_edge": image_size // 4},
            mask_pad_size={"height": image_size // 4, "width": image_size // 4},
        )
        segmenter_processor = SamProcessor(image_processor=sam_image_processor)
    return detector_model, detector_processor, segmenter, segmenter_processor


# LLaVA-1.5's conversation format ("USER: <image>\n{question} ASSISTANT: {answer}"), as a chat template.
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% else %}{{ part['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# Every word the scorers' prompts use, so that a tiny LLaVA's tokenizer knows them.
PROMPT_WORDS = (
    'user assistant : does this figure show " ? please answer yes or no . which of the following captions best '
    "describes image a b c d e answer with option's letter from given choices directly ' s \"? . write caption for"
).split()


def build_tiny_llava(words: Iterable[str], image_size: int = 32, seed: int = 0, hidden_size: int = 64):
    """A randomly initialised tiny ``LlavaForConditionalGeneration`` (a CLIP vision tower, a Llama
    language model) and its ``LlavaProcessor`` with LLaVA-1.5's chat template, over ``words`` and the
    scorers' prompt words (:data:`PROMPT_WORDS`). Saves and loads with ``from_pretrained``."""
    from tokenizers import AddedToken
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tokenizer = build_word_level_tokenizer([*words, *PROMPT_WORDS], model_max_length=512)
    # Like Llama's tokenizer: <bos> first and no <eos>, so a prompt can be continued by its answer.
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)])
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", normalized=False, special=True)]})
    patch_size = 8
    vision = CLIPVisionConfig(
        hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch_size, projection_dim=hidden_size,
    )  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1,  # -2 of a 2-layer tower would leave its second layer untrained
    )  # fmt: skip
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size, vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE, num_additional_image_tokens=1,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
        init_vit_position_embeddings(model)
    return model, processor
