"""The names the engine options accept, in plain Python: settings validate against them at start.

Nothing here imports torch or diffusers, so the HTTP node's settings can check a name without
loading either. ``tests/unit/test_engine_settings.py`` checks that the attention backends listed
here are exactly diffusers' (they change between diffusers releases).
"""

from __future__ import annotations

from typing import Literal, get_args

AUTO = "auto"

#: diffusers 0.42.1's ``AttentionBackendName`` values, plus ``auto`` (the best one installed).
AttentionBackend = Literal[
    "auto",
    "flash",
    "flash_hub",
    "flash_varlen",
    "flash_varlen_hub",
    "flash_4_hub",
    "_flash_3",
    "_flash_varlen_3",
    "_flash_3_hub",
    "_flash_3_varlen_hub",
    "aiter_fa2_hub",
    "flex",
    "native",
    "_native_cudnn",
    "_native_efficient",
    "_native_flash",
    "_native_math",
    "_native_npu",
    "_native_xla",
    "sage",
    "sage_hub",
    "sage_blackwell_hub",
    "sage_varlen",
    "_sage_qk_int8_pv_fp8_cuda",
    "_sage_qk_int8_pv_fp8_cuda_sm90",
    "_sage_qk_int8_pv_fp16_cuda",
    "_sage_qk_int8_pv_fp16_triton",
    "xformers",
]
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)

DType = Literal["auto", "float32", "bfloat16", "float16"]
Quantize = Literal["fp8"]
MemoryProfileName = Literal["auto", "resident", "offload_text_encoder", "model_offload", "cpu"]

#: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"

#: The safety checkers a deployment can choose (tests build their fakes directly).
SafetyCheckerName = Literal["opennsfw", "hf-image-classifier", "none"]
SAFETY_CHECKERS: tuple[str, ...] = get_args(SafetyCheckerName)
