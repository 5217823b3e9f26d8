"""A MusicGen checkpoint in the released layout whose text conditioner is AudioCraft's
``T5Conditioner``, built locally with random weights (no download).

Released MusicGen checkpoints (``facebook/musicgen-small`` and the fine-tunes) name their
text encoder ``t5-base`` in ``xp.cfg``; loading one makes AudioCraft call
``T5Tokenizer.from_pretrained('t5-base')`` and ``T5EncoderModel.from_pretrained('t5-base')``.
Here both resolve from a Hugging Face cache directory this module writes:

* a SentencePiece unigram tokenizer trained in a fraction of a second on a small text of
  music words (``spiece.model``, plus the ``tokenizer.json`` transformers 5 reads first,
  as in the hub repo);
* a ``T5EncoderModel`` with ``t5-base``'s width (768: ``T5Conditioner`` sizes its output
  projection by the name) and one tiny layer;

saved under ``<hf_home>/hub/models--t5-base/snapshots/<revision>/`` with ``refs/main``, the
layout ``huggingface_hub`` reads with ``HF_HUB_OFFLINE=1``. Beside it goes the codec the
released ``compression_state_dict.bin`` names instead of holding weights,
``facebook/encodec_32khz``: a tiny transformers ``EncodecModel`` (32 kHz, 50 frames/s, 4
codebooks of 256, as the LM expects). The MusicGen LM is the tiny debug model's with the
``description`` conditioner switched to T5, written as ``state_dict.bin``
(``{'xp.cfg': yaml, 'best_state': ...}``); the directory can also be put in the same cache
under a hub id, as downloading a repo would.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

T5_NAME = "t5-base"
ENCODEC_NAME = "facebook/encodec_32khz"
T5_WIDTH = 768  # T5Conditioner.MODELS_DIMS['t5-base']: the conditioner's input width
#: The revision the fake snapshots are filed under (any 40 hex digits).
REVISION = "0123456789abcdef0123456789abcdef01234567"

_WORDS = ("drums bass synth piano guitar ambient techno house jazz funk dub slow fast dark bright warm "
          "loop beat groove melody chord pad lead vocal kick snare hat and with a the of in").split()


def offline_hub_env(hf_home: Path) -> dict[str, str]:
    """The environment that makes the hub libraries read ``hf_home`` and never the network
    (what an operator sets on an offline server with a pre-filled cache)."""
    return {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


@contextlib.contextmanager
def offline_hub(hf_home: Path) -> Iterator[None]:
    """Point this process's hub libraries at ``hf_home``, offline, for the block.

    ``huggingface_hub`` reads ``HF_HOME``/``HF_HUB_OFFLINE`` once, when first imported, so
    beside the environment (for subprocesses) its read values are swapped for the block.
    """
    import huggingface_hub.constants as hub

    env = offline_hub_env(hf_home)
    saved_env = {key: os.environ.get(key) for key in env}
    saved = {name: getattr(hub, name) for name in ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE")}
    os.environ.update(env)
    hub.HF_HOME = str(hf_home)
    hub.HF_HUB_CACHE = str(hf_home / "hub")
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(hub, name, value)
        for key, old in saved_env.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def hub_snapshot(hf_home: Path, repo_id: str) -> Path:
    """Create (empty) and return the cache snapshot directory of ``repo_id`` under ``hf_home``."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def train_tokenizer(workdir: Path, seed: int = 0) -> Path:
    """Train a T5-style SentencePiece unigram model (pad 0, eos 1, unk 2, no bos) on a
    generated text of music words; returns the ``spiece.model`` path."""
    import sentencepiece as spm

    rng = random.Random(seed)
    corpus = workdir / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(_WORDS) for _ in range(8)) for _ in range(400)) + "\n")
    prefix = workdir / "spiece"
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=64,
                                   hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1,
                                   unk_id=2, bos_id=-1, minloglevel=2)
    return prefix.with_suffix(".model")


def build_t5_cache(hf_home: Path, seed: int = 0, tokenizer_json: bool = True) -> Path:
    """Write a tiny random ``t5-base`` (tokenizer and encoder) into the hub cache at
    ``hf_home``; returns its snapshot directory.

    :param tokenizer_json: also write ``tokenizer.json`` (what transformers 5 reads); without
        it the snapshot has only ``spiece.model`` for the tokenizer, as in a cache filled by
        transformers 4, whose sentencepiece ``T5Tokenizer`` fetched nothing else.
    """
    import sentencepiece as spm
    import torch
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    snapshot = hub_snapshot(hf_home, T5_NAME)
    with tempfile.TemporaryDirectory() as work:
        spiece = train_tokenizer(Path(work), seed)
        shutil.copy(spiece, snapshot / "spiece.model")
    # transformers 5 builds its tokenizer from tokenizer.json (reading spiece.model alone
    # takes protobuf): write it from the trained pieces, as the hub repo ships both.
    sp = spm.SentencePieceProcessor(model_file=str(snapshot / "spiece.model"))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    if tokenizer_json:
        tokenizer.save_pretrained(snapshot)
    # Room for the 100 sentinel ids a T5Tokenizer adds when no tokenizer_config says otherwise.
    config = T5Config(vocab_size=len(tokenizer) + 100, d_model=T5_WIDTH, d_kv=8, d_ff=32, num_layers=1,
                      num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = T5EncoderModel(config).eval()
    encoder.save_pretrained(snapshot)
    return snapshot


def build_encodec_cache(hf_home: Path, seed: int = 0) -> Path:
    """Write a tiny random ``facebook/encodec_32khz`` (transformers ``EncodecModel``: the
    class AudioCraft wraps for it) into the hub cache at ``hf_home``; returns its snapshot."""
    import torch
    from transformers import EncodecConfig, EncodecModel

    from g4l.engine.debug_model import CARD, FRAME_RATE, N_Q, SAMPLE_RATE

    # AudioCraft derives the codebook count from the bandwidth: kbps * 1000 / (50 * log2(256)) = 4.
    kbps = N_Q * FRAME_RATE * (CARD.bit_length() - 1) / 1000
    config = EncodecConfig(target_bandwidths=[kbps], sampling_rate=SAMPLE_RATE, audio_channels=1, normalize=False,
                           chunk_length_s=None, overlap=None, hidden_size=32, num_filters=4, num_residual_layers=1,
                           upsampling_ratios=[8, 5, 4, 4], codebook_size=CARD, num_lstm_layers=1,
                           use_causal_conv=False, compress=2)
    snapshot = hub_snapshot(hf_home, ENCODEC_NAME)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codec = EncodecModel(config).eval()
        # transformers leaves the codebooks at zero (they come from a checkpoint): every code
        # would decode to the same audio. Random entries, as the debug codec's.
        for layer in codec.quantizer.layers:
            layer.codebook.embed.uniform_(-1.0, 1.0)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.inited.fill_(True)
        codec.save_pretrained(snapshot)
    return snapshot


def t5_musicgen_config() -> dict[str, Any]:
    """The debug model's ``xp.cfg`` with the released models' text conditioner: T5
    (``t5-base``, frozen) on the ``description`` attribute, cross-attention fuser."""
    from g4l.engine.debug_model import debug_config

    cfg = debug_config("cpu")
    cfg["conditioners"] = {"description": {"model": "t5", "t5": {
        "name": T5_NAME, "finetune": False, "word_dropout": 0.0, "normalize_text": False}}}
    return cfg


def save_t5_musicgen_checkpoint(directory: Path, hf_home: Path, seed: int = 0) -> Path:
    """Build the T5-conditioned tiny MusicGen LM (its T5 read from ``hf_home``, which
    :func:`build_t5_cache` filled) and write a released checkpoint directory.

    As in the released files: ``state_dict.bin`` holds the LM and the conditioner's output
    projection but not T5's weights (a frozen T5 is kept out of the state dict), and
    ``compression_state_dict.bin`` only names the codec (:data:`ENCODEC_NAME`, which
    :func:`build_encodec_cache` provides), as ``audiocraft.utils.export`` writes it.
    """
    import audiocraft
    import torch
    from audiocraft.models import builders
    from omegaconf import OmegaConf

    from g4l.engine._compat import prepare_audiocraft_import
    from g4l.engine.debug_model import COMPRESSION_FILE, LM_FILE

    prepare_audiocraft_import()
    cfg = OmegaConf.create(t5_musicgen_config())
    with offline_hub(hf_home), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lm = builders.get_lm_model(cfg).eval()
    directory.mkdir(parents=True, exist_ok=True)
    version = audiocraft.__version__
    torch.save({"xp.cfg": OmegaConf.to_yaml(cfg), "best_state": lm.state_dict(), "version": version,
                "exported": True}, directory / LM_FILE)
    torch.save({"pretrained": ENCODEC_NAME, "exported": True, "version": version}, directory / COMPRESSION_FILE)
    return directory


def put_in_hub_cache(hf_home: Path, repo_id: str, checkpoint: Path) -> Path:
    """Copy a checkpoint directory's files into the hub cache under ``repo_id`` (what
    downloading that repo leaves there); returns the snapshot directory."""
    snapshot = hub_snapshot(hf_home, repo_id)
    for file in checkpoint.iterdir():
        shutil.copy(file, snapshot / file.name)
    return snapshot
