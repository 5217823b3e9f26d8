"""MelodyFlow checkpoints in the released layout: reading them, and writing a tiny one.

A checkpoint is a directory (or Hugging Face repo) holding ``state_dict.bin`` (the DiT) and
``compression_state_dict.bin`` (the VAE), each a ``torch.save``'d dict ``{'xp.cfg': <yaml>,
'best_state': <state dict>, ...}``, the layout AudioCraft's exporter writes for MusicGen.
The text encoder is not in them: a T5 conditioner names its hub model (``t5-base``), a
lookup-table conditioner (the debug model's) carries its table in the state dict.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from g4l.engine._compat import prepare_audiocraft_import

DIT_FILE = "state_dict.bin"
VAE_FILE = "compression_state_dict.bin"
DEBUG_MODEL_ID = "debug-melodyflow"
SAMPLE_RATE = 48000
HOP = 1920  # 48000 / 25 latent frames per second

#: DiT shapes: ``tiny`` is the debug model; ``real`` is facebook/melodyflow-t24-30secs's
#: transformer (dim 1536, 24 layers), for benchmarks with random weights.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"dim": 32, "num_heads": 2, "num_layers": 4, "latent_dim": 8},
    "real": {"dim": 1536, "num_heads": 24, "num_layers": 24, "latent_dim": 128},
}


def debug_config(device: str = "cpu", shape: str = "tiny") -> dict[str, Any]:
    """The training-style config (``xp.cfg``) of the debug model, as a plain dict.

    The keys are those the builders read (AudioCraft's for the VAE and the conditioners,
    :func:`g4l.engine.melodyflow.dit.build_flow_model` for the DiT). The VAE is tiny
    whatever ``shape``; the text conditioner is a lookup table on a hash of the whole text
    (``noop`` tokenizer), so nothing is downloaded.
    """
    dit = SHAPES[shape]
    latent = dit["latent_dim"]
    return {
        "device": device,
        "dtype": "float32",
        "sample_rate": SAMPLE_RATE,
        "channels": 2,
        "dataset": {"segment_duration": 30.0},
        "compression_model": "encodec",
        "encodec": {"autoencoder": "seanet", "quantizer": "no_quant", "sample_rate": SAMPLE_RATE,
                    "channels": 2, "causal": False, "renormalize": False},
        "no_quant": {},
        "seanet": {
            "dimension": latent, "channels": 2, "causal": False, "n_filters": 2, "n_residual_layers": 1,
            "ratios": [8, 6, 5, 4, 2],  # hop 1920: 25 latent frames/s at 48 kHz
            "activation": "Snake", "activation_params": {}, "norm": "weight_norm", "norm_params": {},
            "kernel_size": 7, "last_kernel_size": 7, "residual_kernel_size": 3, "dilation_base": 2,
            "pad_mode": "constant", "true_skip": True, "compress": 2, "lstm": 0,
            "disable_norm_outer_blocks": 0,
            "encoder": {"dimension": 2 * latent},  # mean | scale
            "decoder": {"trim_right_ratio": 1.0},
        },
        "lm_model": "dit",
        "transformer_lm": {
            "dim": dit["dim"], "latent_dim": latent, "num_heads": dit["num_heads"],
            "num_layers": dit["num_layers"], "hidden_scale": 4, "norm": "layer_norm", "norm_first": True,
            "bias_proj": False, "bias_ff": False, "bias_attn": False, "activation": "gelu", "dropout": 0.0,
            "custom": False, "memory_efficient": True, "attention_as_float32": False,
            "positional_embedding": "sin", "layer_scale": None, "skip_connections": True,
            "add_zero_attn": True, "causal": False,
        },
        "classifier_free_guidance": {"training_dropout": 0.2, "inference_coef": 4.0},
        "attribute_dropout": {},
        "fuser": {"cross_attention_pos_emb": False, "cross_attention_pos_emb_scale": 1, "sum": [],
                  "prepend": [], "cross": ["description"], "input_interpolate": []},
        "conditioners": {"description": {"model": "lut",
                                         "lut": {"n_bins": 512, "dim": dit["dim"], "tokenizer": "noop"}}},
    }


def build_models(cfg: Any) -> tuple[Any, Any]:
    """``(vae, dit)`` of a config, random weights, in eval mode."""
    prepare_audiocraft_import()
    from g4l.engine.melodyflow.codec import build_vae
    from g4l.engine.melodyflow.dit import build_flow_model

    return build_vae(cfg), build_flow_model(cfg).eval()


def write_debug_checkpoint(directory: str | Path, seed: int = 0, shape: str = "tiny") -> Path:
    """Write a tiny random-weight MelodyFlow (same ``seed``, same weights) in the released
    layout into ``directory`` and return it; ``shape='real'`` gives it the released DiT's
    size (benchmarks)."""
    prepare_audiocraft_import()
    import audiocraft
    import torch
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(debug_config("cpu", shape))
    with torch.random.fork_rng(devices=[]):  # seeded weights, caller's RNG untouched
        torch.manual_seed(seed)
        vae, dit = build_models(cfg)
        # latent statistics as a trained model would carry them (not the identity)
        dit.latent_mean.normal_(0.0, 0.01)
        dit.latent_std.uniform_(0.5, 1.5)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    yaml = OmegaConf.to_yaml(cfg)
    for name, model in ((DIT_FILE, dit), (VAE_FILE, vae)):
        pkg = {"xp.cfg": yaml, "best_state": model.state_dict(), "version": audiocraft.__version__,
               "exported": True}
        torch.save(pkg, out / name)
    return out


def _fetch(source: str, name: str) -> Path:
    """``name`` from a checkpoint directory, or from hub repo ``source`` (cache first)."""
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a MelodyFlow checkpoint directory holds "
                                    f"{DIT_FILE} and {VAE_FILE}")
        return path
    from huggingface_hub import hf_hub_download

    # Raises LocalEntryNotFoundError offline when not cached: the model cache turns that
    # into a one-line reason (g4l.engine.cache.load_failure_reason).
    return Path(hf_hub_download(repo_id=source, filename=name))


def _read(path: Path) -> tuple[Any, dict[str, Any]]:
    import torch
    from omegaconf import OmegaConf

    pkg = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(pkg, dict) or "xp.cfg" not in pkg or "best_state" not in pkg:
        raise ValueError(f"{path} is not an AudioCraft export ({{'xp.cfg', 'best_state'}} expected)")
    return OmegaConf.create(pkg["xp.cfg"]), pkg["best_state"]


def load_models(source: str, device: str) -> tuple[Any, Any, Any]:
    """``(vae, dit, dit_cfg)`` loaded (strictly) from a checkpoint directory or hub repo."""
    prepare_audiocraft_import()
    from omegaconf import OmegaConf

    from g4l.engine.melodyflow.codec import build_vae, match_weight_norm_names
    from g4l.engine.melodyflow.dit import build_flow_model

    models = []
    cfgs = []
    for name, build in ((VAE_FILE, build_vae), (DIT_FILE, build_flow_model)):
        cfg, state = _read(_fetch(source, name))
        cfg = copy.deepcopy(cfg)
        OmegaConf.set_struct(cfg, False)
        cfg.device = device
        model = build(cfg)
        if name == VAE_FILE:
            state = match_weight_norm_names(state, model)
        model.load_state_dict(state, strict=True)
        models.append(model.to(device).eval())
        cfgs.append(cfg)
    return models[0], models[1], cfgs[1]
