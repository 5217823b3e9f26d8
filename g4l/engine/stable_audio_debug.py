"""Stable Audio Open Small's model configuration, and tiny random-weight checkpoints in its
released file layout (``model_config.json`` + ``model.safetensors``).

:func:`model_config` gives the configuration in the structure of
``stabilityai/stable-audio-open-small``'s ``model_config.json``, in two shapes:

* ``"real"``: the published model's sizes, rebuilt here without a download (values from
  the model card and public copies of its configuration; see ``docs/jerry-engine.md``): an Oobleck
  VAE (128 channels, multipliers 1-2-4-8-16, strides 2-4-4-8-8: 2048 audio frames per
  latent frame, 64 latent channels), ``t5-base`` prompts (64 tokens, width 768), the
  ``seconds_total`` number conditioner, and a 1024-wide, 16-block, 8-head
  ``continuous_transformer`` DiT trained with the ``rf_denoiser`` objective (sampled with
  ``pingpong``), over a 524288-frame window (11.9 s at 44.1 kHz).
* ``"tiny"``: the same structure and window with every width cut down, so that a clip
  renders in about a second on one CPU thread.

The released configuration names its text encoder by hub id (``t5-base``), which
``T5Conditioner`` downloads. The debug checkpoint keeps that conditioner (same class, same
``t5-base`` width of 768) but points its ``model_path`` at a tiny random T5 encoder and a
word-level tokenizer written beside the weights (``t5/``), so it needs no download. The path
is written relative to the checkpoint directory; :func:`g4l.engine.stable_audio.load_engine`
resolves it there (stable-audio-tools itself would read it relative to the working directory).

torch, transformers and stable-audio-tools are imported inside the functions.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

#: The text encoder's folder inside a debug checkpoint directory.
DEBUG_T5_DIR = "t5"
#: Words the debug tokenizer knows (anything else is ``<unk>``): enough for prompts to differ.
_WORDS = ("drums bass synth piano guitar ambient techno house jazz funk dub slow fast dark bright warm "
          "loop beat groove melody chord pad lead vocal kick snare hat noise rain bpm 120 and with a the "
          "of in").split()

_REAL: dict[str, Any] = {
    "model_type": "diffusion_cond",
    "sample_size": 524288,
    "sample_rate": 44100,
    "audio_channels": 2,
    "model": {
        "pretransform": {
            "type": "autoencoder",
            "iterate_batch": True,
            "model_half": False,
            "config": {
                "encoder": {"type": "oobleck", "config": {
                    "in_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16],
                    "strides": [2, 4, 4, 8, 8], "latent_dim": 128, "use_snake": True}},
                "decoder": {"type": "oobleck", "config": {
                    "out_channels": 2, "channels": 128, "c_mults": [1, 2, 4, 8, 16],
                    "strides": [2, 4, 4, 8, 8], "latent_dim": 64, "use_snake": True, "final_tanh": False}},
                "bottleneck": {"type": "vae"},
                "latent_dim": 64,
                "downsampling_ratio": 2048,
                "io_channels": 2,
            },
        },
        "conditioning": {
            "configs": [
                {"id": "prompt", "type": "t5", "config": {"t5_model_name": "t5-base", "max_length": 64}},
                {"id": "seconds_total", "type": "number", "config": {"min_val": 0, "max_val": 256}},
            ],
            "cond_dim": 768,
        },
        "diffusion": {
            "cross_attention_cond_ids": ["prompt", "seconds_total"],
            "global_cond_ids": ["seconds_total"],
            "diffusion_objective": "rf_denoiser",
            "type": "dit",
            "config": {
                "io_channels": 64, "embed_dim": 1024, "depth": 16, "num_heads": 8,
                "cond_token_dim": 768, "global_cond_dim": 768,
                "transformer_type": "continuous_transformer", "attn_kwargs": {"qk_norm": "ln"},
            },
        },
        "io_channels": 64,
    },
}


def model_config(shape: str = "tiny", t5_path: str | None = None) -> dict[str, Any]:
    """Stable Audio Open Small's ``model_config.json`` structure (see the module docstring).

    :param shape: ``"real"`` (the published sizes) or ``"tiny"`` (same structure, tiny widths).
    :param t5_path: a local T5 encoder directory for the prompt conditioner (its
        ``model_path``); ``None`` keeps the released config's hub id only.
    """
    if shape not in ("real", "tiny"):
        raise ValueError(f"shape must be 'real' or 'tiny', got {shape!r}")
    config = copy.deepcopy(_REAL)
    model = config["model"]
    if t5_path is not None:
        model["conditioning"]["configs"][0]["config"]["model_path"] = t5_path
    if shape == "tiny":
        ae = model["pretransform"]["config"]
        ae["encoder"]["config"].update(channels=2, c_mults=[1, 1, 1, 1, 1], latent_dim=8)
        ae["decoder"]["config"].update(channels=2, c_mults=[1, 1, 1, 1, 1], latent_dim=4)
        ae["latent_dim"] = 4
        model["io_channels"] = 4
        model["diffusion"]["config"].update(io_channels=4, embed_dim=32, depth=1, num_heads=1)
    return config


def write_tiny_t5(directory: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``T5EncoderModel`` with ``t5-base``'s width (768, what
    ``T5Conditioner`` expects of the name) and a word-level tokenizer to ``directory``, in
    the layout ``from_pretrained`` reads. Returns the directory."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    vocab.update({word: i + 3 for i, word in enumerate(_WORDS)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # T5 ends every sequence with </s>.
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>", model_max_length=512).save_pretrained(out)
    config = T5Config(vocab_size=len(vocab), d_model=768, d_kv=8, d_ff=16, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, pad_token_id=0,
                      eos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        T5EncoderModel(config).save_pretrained(out)
    return out


def write_random_checkpoint(directory: str | Path, config: dict[str, Any], seed: int = 0) -> Path:
    """Build ``config``'s model with stable-audio-tools (random weights from ``seed``) and
    write it as ``model_config.json`` + ``model.safetensors``. Returns the directory.

    The prompt conditioner's ``model_path`` (if any) must resolve from the working directory
    or be absolute while building; ``config`` is written as given."""
    import torch
    from safetensors.torch import save_file

    from g4l.engine._compat import prepare_stable_audio_import

    prepare_stable_audio_import()
    from stable_audio_tools.models.factory import create_model_from_config

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model_from_config(resolve_model_paths(config, out))
        # stable-audio-tools zero-initialises output projections (attention, the DiT's
        # cross-attention among them) for training: random weights there too, or the
        # untrained model would ignore its prompt.
        with torch.no_grad():
            for param in model.parameters():
                if param.numel() and not param.any():
                    param.normal_(0.0, 0.5)
    state = {key: value.detach().contiguous().clone() for key, value in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    (out / "model_config.json").write_text(json.dumps(config, indent=2))
    return out


def resolve_model_paths(config: dict[str, Any], base: Path) -> dict[str, Any]:
    """``config`` with relative conditioner ``model_path`` entries (a text encoder shipped
    inside a checkpoint directory) made absolute under the directory ``base``."""
    config = copy.deepcopy(config)
    for conditioner in config.get("model", {}).get("conditioning", {}).get("configs", []):
        path = conditioner.get("config", {}).get("model_path")
        if isinstance(path, str) and not Path(path).is_absolute():
            conditioner["config"]["model_path"] = str(base / path)
    return config


def write_debug_checkpoint(directory: str | Path, seed: int = 0, shape: str = "tiny") -> Path:
    """Write a random-weight Stable Audio Open Small-structured model to ``directory`` in the
    released layout (``model_config.json`` + ``model.safetensors``, plus its tiny text
    encoder under ``t5/``), loadable by :func:`g4l.engine.stable_audio.load_engine`.

    :param shape: ``"tiny"`` (the debug model: about a second a clip on one CPU thread) or
        ``"real"`` (the published sizes, for benchmarks).
    """
    out = Path(directory)
    write_tiny_t5(out / DEBUG_T5_DIR, seed)
    return write_random_checkpoint(out, model_config(shape, t5_path=DEBUG_T5_DIR), seed)
