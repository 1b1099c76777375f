"""The model: a plain Hugging Face ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama text model).

Nothing here is custom at inference time: the exported directory loads in transformers and vLLM with no
remote code. Training-only pieces (the vision warm-up heads) live in ``warmup.py`` and are never saved
into the HF directory.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor)

from training.data.boxes import BOX_SCALE
from training.medclm.config import MedCLMConfig
from training.medclm.errors import MedCLMError
from training.medclm.tokenizer import image_token_id

# Grayscale radiographs are copied into three equal channels, so one mean/std for all channels (not
# ImageNet's per-channel colour statistics); 0.5/0.5 maps [0, 1] to [-1, 1] symmetrically.
IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)


def build_image_processor(image_size: int):
    """CLIPImageProcessor that stretch-resizes to ``image_size`` x ``image_size`` with NO centre crop.

    Stretching (not crop, not letterbox) keeps a box normalised to the original image equal to the box
    normalised to the image the model saw, which is what the ``<box>`` contract needs.
    """
    try:  # transformers >= 5 without torchvision: the PIL backend, saved as plain "CLIPImageProcessor"
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as Processor
    return Processor(
        do_resize=True, size={"height": image_size, "width": image_size}, resample=3,  # bicubic, as CLIP
        do_center_crop=False, crop_size={"height": image_size, "width": image_size},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(IMAGE_MEAN), image_std=list(IMAGE_STD), do_convert_rgb=True,
    )


def build_processor(tokenizer, image_processor, patch_size: int) -> LlavaProcessor:
    """LlavaProcessor: expands one ``<image>`` into one token per patch (CLS is counted, then dropped)."""
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=tokenizer.chat_template)


def padded_vocab_size(tokenizer) -> int:
    """Embedding rows: the tokenizer's length rounded up to a multiple of 64 (aligned matmuls)."""
    return -(-len(tokenizer) // 64) * 64


def build_model(config: MedCLMConfig, tokenizer) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA sized by ``config``, with the tokenizer's special token ids."""
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden, intermediate_size=config.vision_intermediate,
        num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
        image_size=config.image_size, patch_size=config.patch_size, num_channels=3,
        hidden_act="quick_gelu", projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=padded_vocab_size(tokenizer), hidden_size=config.text_hidden,
        intermediate_size=config.text_intermediate, num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads, num_key_value_heads=config.text_heads,
        max_position_embeddings=config.max_positions, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    llava = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id(tokenizer),
        image_seq_length=config.image_tokens, projector_hidden_act="gelu",
        vision_feature_select_strategy="default", vision_feature_layer=config.vision_feature_layer,
    )
    torch.manual_seed(config.seed)
    model = LlavaForConditionalGeneration(llava)
    _set_generation_ids(model, tokenizer)
    return model


def init_number_rows(model, tokenizer, values: list[int], std: float = 0.02) -> None:
    """Give the whole-number tokens of ``values`` sinusoidal input and output embeddings of their value.

    Row v holds sin and cos of v / 1000 (the box scale) at geometrically spaced frequencies (one cycle per
    image side up to one per two grid cells), scaled to the usual init ``std``. Neighbouring values then start
    with nearly equal embeddings and a hidden state that matches one value also scores its neighbours: a near
    miss is a small error from the first step, where independent random rows would make 129 unrelated classes.
    """
    llava = base_llava(model)
    embeddings = [llava.get_input_embeddings().weight, llava.get_output_embeddings().weight]
    width = embeddings[0].shape[1]
    pairs = width // 2
    cycles = torch.logspace(0, torch.log10(torch.tensor(len(values) / 2.0)), pairs)  # per image side
    ids = tokenizer.convert_tokens_to_ids([str(v) for v in values])
    position = torch.tensor(values, dtype=torch.float32)[:, None] / BOX_SCALE
    angle = 2 * torch.pi * position * cycles[None, :]
    rows = torch.zeros(len(values), width)
    rows[:, 0:2 * pairs:2], rows[:, 1:2 * pairs:2] = torch.sin(angle), torch.cos(angle)
    rows *= std * 2 ** 0.5  # sin/cos have RMS 1/sqrt(2)
    with torch.no_grad():
        for weight in embeddings:
            weight[ids] = rows.to(weight.dtype)


def _set_generation_ids(model, tokenizer) -> None:
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    gen.do_sample = False


def load_pretrained(path: str | Path, config: MedCLMConfig):
    """(model, tokenizer, image processor) from a local HF LLaVA-family checkpoint directory.

    With ``config.lora_rank > 0`` the text model gets LoRA adapters (peft) on its attention and MLP
    projections and only they, plus the multimodal projector, train; ``merge_lora`` folds them back so the
    export stays a plain LLaVA. Only local files are read: this machine has no model hub.
    """
    from transformers import AutoImageProcessor, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise MedCLMError(f"init_from {path} is not a Hugging Face checkpoint directory (no config.json)")
    model = LlavaForConditionalGeneration.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    if tokenizer.chat_template is None:
        raise MedCLMError(f"{path} has no chat template; the prompts need one")
    image_token_id(tokenizer)
    if config.lora_rank > 0:
        model = add_lora(model, config)
    return model, tokenizer, image_processor


def add_lora(model, config: MedCLMConfig):
    """Wrap ``model`` with LoRA adapters on the language model; the projector stays fully trainable."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout, bias="none",
        # Regex on full module names: language-model projections only, never the CLIP tower's q/k/v.
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        modules_to_save=["multi_modal_projector"],
    )
    return get_peft_model(model, lora)


def merge_lora(model):
    """A plain ``LlavaForConditionalGeneration`` with any LoRA adapters merged into the weights."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def base_llava(model) -> LlavaForConditionalGeneration:
    """The underlying LLaVA module (under peft's wrappers when LoRA is on) for direct submodule access."""
    if hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def patch_grid(model) -> int:
    """Patches per image side of a (possibly LoRA-wrapped) LLaVA model; its image tokens are the square."""
    vision = base_llava(model).config.vision_config
    return vision.image_size // vision.patch_size


def count_parameters(model) -> int:
    """Number of parameters (all, trainable or not)."""
    return sum(p.numel() for p in model.parameters())
