"""A tiny random-weight MusicGen for tests and development: no download, fast on CPU.

It is built from an AudioCraft config (:func:`debug_config`) by AudioCraft's own builders,
so it runs the same code as a real checkpoint: a SEANet/RVQ EnCodec at 32 kHz, 50 frames/s,
4 codebooks with the delay pattern, and a small transformer LM with cross-attention on a
``description`` text condition. The text conditioner is a lookup table with the ``noop``
tokenizer (a hash of the whole string): it needs no tokenizer download, unlike T5 or
AudioCraft's own debug model (spaCy ``en_core_web_sm``).

:func:`save_debug_checkpoint` writes it in the Hugging Face AudioCraft repo layout, so
``MusicGen.get_pretrained(directory)`` exercises the production loading path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from g4l.engine._compat import prepare_audiocraft_import

if TYPE_CHECKING:
    from audiocraft.models import MusicGen

#: Name given to models built by :func:`build_debug_musicgen`.
DEBUG_MODEL_ID = "debug"

SAMPLE_RATE = 32000
FRAME_RATE = 50  # 32000 / (8*5*4*4): MusicGen's EnCodec frame rate
N_Q = 4
CARD = 256
LM_DIM = 32
MAX_DURATION = 30.0  # seconds one LM pass may produce (cfg.dataset.segment_duration)

# The file names AudioCraft's loaders read from a checkpoint directory (loaders.py).
LM_FILE = "state_dict.bin"
COMPRESSION_FILE = "compression_state_dict.bin"


#: Language-model shapes of released MusicGen checkpoints (dim, heads, layers, card), for
#: benchmarks with random weights: ``tiny`` is the debug model; ``small`` (~420 M LM
#: parameters) and ``medium`` (~1.5 B) match facebook/musicgen-small/-medium's transformer.
#: Their text conditioner stays the lookup table (no T5 download) and their codec the tiny
#: one with the right codebook size: the LM's per-step cost is that of the real model.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"dim": LM_DIM, "num_heads": 2, "num_layers": 2, "hidden_scale": 2, "card": CARD},
    "small": {"dim": 1024, "num_heads": 16, "num_layers": 24, "hidden_scale": 4, "card": 2048},
    "medium": {"dim": 1536, "num_heads": 24, "num_layers": 48, "hidden_scale": 4, "card": 2048},
}


def debug_config(device: str = "cpu", shape: str = "tiny") -> dict[str, Any]:
    """The training-style config (``xp.cfg``) of the debug model, as a plain dict.

    Only keys that AudioCraft's builders read are present; names mirror the released
    MusicGen configs so the same builder code paths run.

    Args:
        device: torch device.
        shape: a key of :data:`SHAPES` (the language model's size).
    """
    lm = SHAPES[shape]
    return {
        "device": device,
        "dtype": "float32",
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "dataset": {"segment_duration": MAX_DURATION},
        # --- compression model (builders.get_compression_model) ---
        "compression_model": "encodec",
        "encodec": {
            "autoencoder": "seanet",
            "quantizer": "rvq",
            "sample_rate": SAMPLE_RATE,
            "channels": 1,
            "causal": False,
            "renormalize": False,
        },
        "seanet": {
            "dimension": 32,
            "channels": 1,
            "causal": False,
            "n_filters": 4,
            "n_residual_layers": 1,
            "ratios": [8, 5, 4, 4],  # hop 640 -> 50 Hz at 32 kHz, like MusicGen's EnCodec
            "activation": "ELU",
            "activation_params": {"alpha": 1.0},
            "norm": "none",
            "norm_params": {},
            "kernel_size": 7,
            "last_kernel_size": 7,
            "residual_kernel_size": 3,
            "dilation_base": 2,
            "pad_mode": "constant",
            "true_skip": True,
            "compress": 2,
            "lstm": 0,  # real EnCodec has 2 LSTM layers: slow on CPU and pointless here
            "disable_norm_outer_blocks": 0,
            "encoder": {},
            "decoder": {"trim_right_ratio": 1.0},
        },
        "rvq": {
            "n_q": N_Q,
            "q_dropout": False,
            "bins": lm["card"],
            "decay": 0.99,
            "kmeans_init": False,  # random uniform codebooks: usable without training data
            "kmeans_iters": 1,
            "threshold_ema_dead_code": 2,
        },
        # --- language model (builders.get_lm_model) ---
        "lm_model": "transformer_lm",
        "transformer_lm": {
            "n_q": N_Q,
            "card": lm["card"],
            "dim": lm["dim"],
            "num_heads": lm["num_heads"],
            "num_layers": lm["num_layers"],
            "hidden_scale": lm["hidden_scale"],
            "dropout": 0.0,
            "activation": "gelu",
            "norm": "layer_norm",
            "norm_first": True,
            "bias_ff": False,
            "bias_attn": False,
            "bias_proj": False,
            "causal": True,
            "custom": False,
            "memory_efficient": True,  # torch SDPA, as released MusicGen configs
            "attention_as_float32": False,
            "positional_embedding": "sin",
            "xpos": False,
            "layer_scale": None,
            "past_context": None,
            "weight_init": "gaussian",
            "depthwise_init": "current",
            "zero_bias_init": True,
            "cross_attention": False,  # switched on by the fuser's 'cross' entry
            "two_step_cfg": False,
        },
        "codebooks_pattern": {
            "modeling": "delay",
            "delay": {"delays": list(range(N_Q)), "flatten_first": 0, "empty_initial": 0},
        },
        "classifier_free_guidance": {"training_dropout": 0.3, "inference_coef": 3.0},
        "attribute_dropout": {},
        "fuser": {
            "cross_attention_pos_emb": False,
            "cross_attention_pos_emb_scale": 1,
            "sum": [],
            "prepend": [],
            "cross": ["description"],
            "input_interpolate": [],
        },
        "conditioners": {
            # 'noop' hashes the whole text to one bin: no tokenizer download needed.
            "description": {"model": "lut", "lut": {"n_bins": 512, "dim": LM_DIM, "tokenizer": "noop"}},
        },
    }


def _build_parts(seed: int, device: str, shape: str = "tiny") -> tuple[Any, Any, Any]:
    """Build (cfg, compression_model, lm) with AudioCraft's builders, seeded."""
    prepare_audiocraft_import()
    import torch
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(debug_config(device, shape))
    # fork_rng: seed the weights without disturbing the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        compression_model = builders.get_compression_model(cfg).eval()
        lm = builders.get_lm_model(cfg).eval()
    lm.cfg = cfg  # type: ignore[assignment]  # what loaders.load_lm_model sets; MusicGen reads max_duration
    return cfg, compression_model, lm


def build_debug_musicgen(seed: int = 0, device: str = "cpu", shape: str = "tiny") -> MusicGen:
    """Build the tiny random-weight MusicGen (same ``seed`` -> same weights).

    Args:
        seed: seeds the weight initialisation.
        device: torch device, ``'cpu'`` or ``'cuda'``.
        shape: the language model's size, a key of :data:`SHAPES` (``'small'``,
            ``'medium'``: the released models' transformer, for benchmarks).
    """
    _, compression_model, lm = _build_parts(seed, device, shape)
    from audiocraft.models import MusicGen

    return MusicGen(DEBUG_MODEL_ID, compression_model, lm)


def save_debug_checkpoint(directory: str | Path, seed: int = 0, shape: str = "tiny") -> Path:
    """Write the debug model as an AudioCraft release checkpoint directory.

    ``shape`` (a key of :data:`SHAPES`) gives it the transformer of a released model:
    a ``'small'`` checkpoint served end to end costs a worker what musicgen-small does
    (the GPU check, ``scripts/gpu_check``), with no download.

    The layout is the one of the Hugging Face AudioCraft repos, read by
    ``audiocraft.models.loaders``: ``state_dict.bin`` and ``compression_state_dict.bin``,
    each a ``torch.save``'d dict ``{'xp.cfg': <yaml>, 'best_state': <state dict>,
    'version', 'exported'}`` (as written by ``audiocraft.utils.export``).

    Returns:
        The directory, for ``MusicGen.get_pretrained(str(directory))``.
    """
    prepare_audiocraft_import()
    import audiocraft
    import torch
    from omegaconf import OmegaConf

    cfg, compression_model, lm = _build_parts(seed, "cpu", shape)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    yaml = OmegaConf.to_yaml(cfg)
    for file, model in ((LM_FILE, lm), (COMPRESSION_FILE, compression_model)):
        pkg = {"xp.cfg": yaml, "best_state": model.state_dict(),
               "version": audiocraft.__version__, "exported": True}
        torch.save(pkg, out / file)
    return out
