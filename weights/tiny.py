"""Build a tiny random-weight FLUX.2 [dev]-shaped checkpoint, fully offline.

The checkpoint has the real diffusers folder layout and the real component classes
(``Flux2Transformer2DModel``, ``Mistral3ForConditionalGeneration``, ``PixtralProcessor``,
``AutoencoderKLFlux2``, ``FlowMatchEulerDiscreteScheduler``) with tiny widths, so that the real
``Flux2Pipeline`` runs on a CPU in a fraction of a second. It is the recipe of
``docs/reference/flux2-diffusers.md`` §7: every module seeded with ``torch.manual_seed(0)``, a BPE
tokenizer trained in-process with the Tekken special tokens at their real ids, and a
Mistral-Small-3.1-style chat template. Two builds give byte-identical weight files.

Output is random noise; the checkpoint exists to exercise code paths, not to make pictures.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from core.errors import WeightsError

#: Folder name under a cache directory; bump the suffix when the recipe changes.
TINY_CHECKPOINT_NAME = "flux2-tiny-v1"

#: Mistral's Tekken control tokens, in id order (id = position). ``[IMG]`` = 10, ``<pad>`` = 11.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
)
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
IMAGE_TOKEN_ID = SPECIAL_TOKENS.index("[IMG]")
PAD_ID = SPECIAL_TOKENS.index("<pad>")

VOCAB_SIZE = 1024
TEXT_HIDDEN = 16
TEXT_LAYERS = 31  # hidden_states[10, 20, 30] stay un-normed intermediate layers (doc §7)

#: The tiny transformer's configuration (real interfaces, tiny widths).
TINY_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 1,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 3 * TEXT_HIDDEN,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (4, 4, 4, 4),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": True,
}
#: What tells the tiny checkpoint apart from a real one (its transformer's widths and depth).
_TINY_IDENTITY = ("num_layers", "num_single_layers", "attention_head_dim", "num_attention_heads")

#: Mistral-Small-3.1-style template, without the default system message or tool calling.
#: The pipeline sends a system message, then one or two user turns (images, then text).
CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- if messages[0]['content'] is string %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- else %}"
    "{%- set system_message = messages[0]['content'][0]['text'] %}"
    "{%- endif %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set system_message = none %}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{{- bos_token }}"
    "{%- if system_message is not none %}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if message['content'] is string %}"
    "{{- '[INST]' + message['content'] + '[/INST]' }}"
    "{%- else %}"
    "{{- '[INST]' }}"
    "{%- for block in message['content'] %}"
    "{%- if block['type'] == 'text' %}"
    "{{- block['text'] }}"
    "{%- elif block['type'] in ['image', 'image_url'] %}"
    "{{- '[IMG]' }}"
    "{%- else %}"
    "{{- raise_exception('Only text, image and image_url blocks are supported in message "
    "content!') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{{- '[/INST]' }}"
    "{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{%- if message['content'] is string %}"
    "{{- message['content'] + eos_token }}"
    "{%- else %}"
    "{{- message['content'][0]['text'] + eos_token }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- raise_exception('Only a leading system message, then user and assistant roles, are "
    "supported!') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

_EDIT_PROMPTS = (
    "make the car #FF0000",
    "turn the sky into a sunset with orange and purple clouds",
    "replace the background with a snowy mountain landscape",
    "add a small red hat to the cat and keep everything else the same",
    "combine the person from image 1 with the style of image 2",
    "remove the text from the sign and make it look like watercolor",
)
_ASCII_LINE = "".join(chr(c) for c in range(32, 127))

Progress = Callable[[str], None]

# Builds reseed torch's global RNG: one at a time per process keeps them deterministic.
_BUILD_LOCK = threading.Lock()


def build_tiny_checkpoint(dest: Path, *, progress: Progress | None = None) -> Path:
    """Build the tiny checkpoint into ``dest`` and return ``dest``.

    ``dest`` must not exist or be an empty folder. The build runs in a temporary folder next to
    ``dest`` and is renamed into place at the end, so an interrupted build leaves no half
    checkpoint behind. No network is touched. ``progress`` gets one line per component.

    Raises:
        WeightsError: ``dest`` exists and is not an empty folder, or the build failed.
    """
    dest = Path(dest)
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise WeightsError(
            f"cannot build the tiny checkpoint into {dest}: it exists and is not an empty folder"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda _message: None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        with _BUILD_LOCK, _quiet_offline():
            _build_into(tmp, report)
        _normalise_permissions(tmp)
        os.rename(tmp, dest)
    except WeightsError:
        raise
    except Exception as error:
        raise WeightsError(
            f"could not build the tiny checkpoint into {dest}: {type(error).__name__}: {error}"
        ) from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(f"tiny checkpoint ready at {dest}")
    return dest


def ensure_tiny_checkpoint(cache_dir: Path) -> Path:
    """Return ``cache_dir / "flux2-tiny-v1"``, building it first if it is not there yet.

    Concurrent callers (processes or threads) are serialised with an exclusive lock file, so the
    checkpoint is built once.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / TINY_CHECKPOINT_NAME
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{TINY_CHECKPOINT_NAME}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not (target / "model_index.json").is_file():
                build_tiny_checkpoint(target)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return target


def is_tiny_checkpoint(model_dir: Path) -> bool:
    """True when ``model_dir`` holds this module's tiny random-weight checkpoint (its transformer
    has the tiny depth and widths), False for any other checkpoint or an unreadable config."""
    try:
        config = json.loads((Path(model_dir) / "transformer" / "config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and all(
        config.get(key) == TINY_TRANSFORMER[key] for key in _TINY_IDENTITY
    )


@contextlib.contextmanager
def _quiet_offline() -> Iterator[None]:
    """Hub offline mode and no tqdm bars for the duration of the build; restored afterwards.

    ``HF_HUB_OFFLINE`` is read once when huggingface_hub is imported, so the already-read constant
    is switched too. Nothing in the build calls the hub; this is a belt-and-braces guard.
    """
    saved_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants
    from transformers.utils import logging as hf_logging

    saved_constant = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
        constants.HF_HUB_OFFLINE = saved_constant
        if saved_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _normalise_permissions(root: Path) -> None:
    """Give the folder ordinary permissions: ``mkdtemp`` makes it 0700, safetensors files 0600."""
    os.chmod(root, 0o755)
    for path in root.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _build_into(path: Path, report: Progress) -> None:
    import torch

    # Seeding must not leak into the caller's RNG state.
    with torch.random.fork_rng(devices=[]):
        _build_components(path, report)


def _build_components(path: Path, report: Progress) -> None:
    from diffusers import Flux2Pipeline

    report("transformer: Flux2Transformer2DModel (1 double + 2 single blocks)")
    transformer = _transformer()
    report(f"text encoder: Mistral3ForConditionalGeneration ({TEXT_LAYERS} layers, hidden 16)")
    text_encoder = _text_encoder()
    report("tokenizer: PixtralProcessor around a BPE tokenizer trained in-process")
    processor = _processor()
    report("vae: AutoencoderKLFlux2 (4 levels, 32 latent channels)")
    vae = _vae()
    report("scheduler: FlowMatchEulerDiscreteScheduler (FLUX.2 config)")
    scheduler = _scheduler()

    pipe = Flux2Pipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=processor,
        transformer=transformer,
    )
    report("writing safetensors")
    pipe.save_pretrained(path, safe_serialization=True)


def _transformer() -> Any:
    import torch
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    return Flux2Transformer2DModel(**TINY_TRANSFORMER)


def _text_encoder() -> Any:
    import torch
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    text_config = {
        "model_type": "mistral",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 37,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 4,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1e9,
        "sliding_window": None,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
    }
    vision_config = {
        "model_type": "pixtral",
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "image_size": 1024,
        "patch_size": 16,
        "num_channels": 3,
        "head_dim": 4,
    }
    config = Mistral3Config(
        text_config=text_config,
        vision_config=vision_config,
        image_token_index=IMAGE_TOKEN_ID,
        spatial_merge_size=2,
        vision_feature_layer=-1,
        multimodal_projector_bias=False,
        projector_hidden_act="gelu",
        # Untied, like the real Mistral-Small-3.x (its lm_head is a separate 0.67 B weight).
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Mistral3ForConditionalGeneration(config)
    generation = model.generation_config
    generation.bos_token_id = BOS_ID
    generation.eos_token_id = EOS_ID
    generation.pad_token_id = PAD_ID
    return model.eval()


def _corpus() -> list[str]:
    from diffusers.pipelines.flux2 import system_messages

    texts = [
        system_messages.SYSTEM_MESSAGE,
        system_messages.SYSTEM_MESSAGE_UPSAMPLING_T2I,
        system_messages.SYSTEM_MESSAGE_UPSAMPLING_I2I,
        *_EDIT_PROMPTS,
        _ASCII_LINE,
    ]
    return texts * 4


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(token) != token_id:
            raise WeightsError(f"tiny tokenizer: {token} got id {backend.token_to_id(token)}")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=131072,
        chat_template=CHAT_TEMPLATE,
    )


def _processor() -> Any:
    from transformers import PixtralImageProcessorPil, PixtralProcessor

    image_processor = PixtralImageProcessorPil(
        size={"longest_edge": 1024}, patch_size={"height": 16, "width": 16}
    )
    return PixtralProcessor(
        image_processor=image_processor,
        tokenizer=_tokenizer(),
        patch_size=16,
        spatial_merge_size=2,
        chat_template=CHAT_TEMPLATE,
    )


def _vae() -> Any:
    import torch
    from diffusers import AutoencoderKLFlux2

    torch.manual_seed(0)
    return AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=32,
        norm_num_groups=4,
        sample_size=1024,
        use_quant_conv=True,
        use_post_quant_conv=True,
        mid_block_add_attention=True,
        batch_norm_eps=1e-4,
        batch_norm_momentum=0.1,
        patch_size=(2, 2),
    ).eval()


def _scheduler() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
        time_shift_type="exponential",
    )
