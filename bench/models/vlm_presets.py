"""Full-size architectures of three published VLM checkpoints, as plain data, with their published parameter counts.

FULL_PRESETS[name] holds the architecture fields of the checkpoint's config.json as published on the Hugging Face
Hub (its own nesting and spellings kept: Qwen2-VL's flat text fields, `rope_scaling` "mrope", `in_chans`; Idefics3's
`text_config` / `vision_config`). Left out are the fields that do not shape the network: `architectures`,
`torch_dtype`, `transformers_version`, `use_cache`, `_name_or_path`, and processor settings (image sizes; the 81
image tokens per SmolVLM tile follow from `scale_factor`).
Pop `model_type` from a deep copy and the rest is the keyword arguments of `transformers.AutoConfig.for_model`:

    cfg = copy.deepcopy(FULL_PRESETS["smolvlm"]); mt = cfg.pop("model_type")
    config = AutoConfig.for_model(mt, **cfg)  # with torch.device("meta"): AutoModelForImageTextToText.from_config(config)

PUBLISHED_PARAMETERS[name] is (exact parameter count, where it is published). The count is what the Hub shows as the
checkpoint's safetensors size ("Model size ... params", rounded on the model page): the tensors stored, each once, so
a tied lm_head counts once. tests/models/test_vlm_presets.py builds each preset on the meta device and checks that
`sum(p.numel() for p in model.parameters())` (which also counts tied weights once) equals it.

Nothing here imports torch or transformers.
"""

from __future__ import annotations

FULL_CHECKPOINTS: dict[str, str] = {
    "smolvlm": "HuggingFaceTB/SmolVLM-Instruct",
    "qwen2-vl-2b": "Qwen/Qwen2-VL-2B-Instruct",
    "qwen2-vl-7b": "Qwen/Qwen2-VL-7B-Instruct",
}

# Qwen2-VL's shared fields: special tokens, M-RoPE, the 32-block ViT in front of the language model
# (665,271,296 parameters with the 2B's merger, 675,759,104 with the 7B's).
# The published configs differ only in the text model's size, its tying and vocabulary, and the width the vision
# merger projects to (vision_config.hidden_size = the text model's hidden_size).
_QWEN2_VL_TOKENS = {
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
}


def _qwen2_vl(hidden_size: int, intermediate_size: int, heads: int, kv_heads: int, tie: bool, vocab_size: int) -> dict:
    return {
        "model_type": "qwen2_vl",
        "attention_dropout": 0.0,
        **_QWEN2_VL_TOKENS,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "num_attention_heads": heads,
        "num_hidden_layers": 28,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": tie,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 32,
            "embed_dim": 1280,
            "mlp_ratio": 4,
            "num_heads": 16,
            "in_chans": 3,
            "hidden_size": hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "vocab_size": vocab_size,
    }


FULL_PRESETS: dict[str, dict] = {
    # HuggingFaceTB/SmolVLM-Instruct: Idefics3 = SigLIP-SO400M/14 at 384 px (27 layers, 1152 wide), a 3x3 pixel
    # shuffle (729 patches -> 81 tokens) and one bias-free Linear(1152*9 -> 2048), SmolLM2-1.7B (Llama: 24 layers,
    # 32 heads, no GQA) with its vocabulary grown by three image tokens to 49155 and an untied lm_head, RoPE base
    # 273768 for the 16k context.
    "smolvlm": {
        "model_type": "idefics3",
        "image_token_id": 49153,
        "scale_factor": 3,
        "tie_word_embeddings": False,
        "text_config": {
            "model_type": "llama",
            "head_dim": 64,
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "max_position_embeddings": 16384,
            "num_attention_heads": 32,
            "num_hidden_layers": 24,
            "num_key_value_heads": 32,
            "rms_norm_eps": 1e-05,
            "rope_theta": 273768.0,
            "tie_word_embeddings": False,
            "vocab_size": 49155,
        },
        "vision_config": {
            "model_type": "idefics3",
            "hidden_size": 1152,
            "image_size": 384,
            "intermediate_size": 4304,
            "num_attention_heads": 16,
            "num_hidden_layers": 27,
            "patch_size": 14,
        },
        "vocab_size": 49155,
    },
    # Qwen/Qwen2-VL-2B-Instruct: the Qwen2-1.5B text model, embeddings tied to the lm_head (stored once).
    "qwen2-vl-2b": _qwen2_vl(hidden_size=1536, intermediate_size=8960, heads=12, kv_heads=2, tie=True, vocab_size=151936),
    # Qwen/Qwen2-VL-7B-Instruct: the Qwen2-7B text model, untied, its embedding rows padded to 152064 (untied: both are stored).
    "qwen2-vl-7b": _qwen2_vl(hidden_size=3584, intermediate_size=18944, heads=28, kv_heads=4, tie=False, vocab_size=152064),
}

# How each exact figure was derived (the model pages round them: 2.25B, 2.21B, 8.29B params, BF16):
# - qwen2-vl-2b, 2,208,985,600: the Hub's safetensors parameter count (huggingface_hub's
#   HfApi().get_safetensors_metadata(repo).parameter_count["BF16"]), as quoted for this repo by third-party code
#   that lists those counts, and by MTEB's ModelMeta (n_parameters) for models built on it. The same number is the
#   base Qwen2-VL-2B checkpoint's (same architecture) model.safetensors.index.json "total_size" 4,417,971,200 bytes / 2 bytes per bf16
#   parameter; the tied lm_head is not stored.
# - qwen2-vl-7b, 8,291,375,616: the Hub's safetensors parameter count, as quoted by the same third-party listing;
#   in bf16 that is a "total_size" of 16,582,751,232 bytes. The untied lm_head (152064 x 3584) is included.
# - smolvlm, 2,246,272,880: the sum over the checkpoint's bf16 safetensors tensors, by the names and shapes a
#   from-scratch reimplementation lists from them (no verbatim quote of the integer was found to cite):
#   vision tower 412,987,248 + connector 21,233,664 + text model 1,812,051,968 (its untied lm_head, 49155 x 2048 =
#   100,669,440, included), i.e. a "total_size" of 4,492,545,760 bytes; the model page rounds it to 2.25B.
PUBLISHED_PARAMETERS: dict[str, tuple[int, str]] = {
    "smolvlm": (2_246_272_880, "https://huggingface.co/HuggingFaceTB/SmolVLM-Instruct"),
    "qwen2-vl-2b": (2_208_985_600, "https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct"),
    "qwen2-vl-7b": (8_291_375_616, "https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct"),
}
