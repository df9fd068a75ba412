"""The one-command GPU check: every GPU figure this project needs, in at most 8 minutes.

Usage::

    make gpu-check                                          # = the line below
    .venv/bin/python -m benchmarks.bench_gpu                # writes results/gpu.{json,csv}
    .venv/bin/python -m benchmarks.bench_gpu --smoke --out /tmp/gpu-smoke.json   # CPU dry run

Run it first on a new GPU. It needs no weights and no network, prints one summary line (seconds
per step per fast path, the fraction of the compute floor reached, peak memory, and which fast
paths beat plain bf16 by enough to turn on: ``recommend: FLUX2_...``) and keeps to a time budget
(``--budget-s``, 480 s by default, sized for one H100/H200): a section that would not fit in what
is left is recorded as skipped rather than run.

Without a CUDA device it prints ``skipped: no CUDA device``, writes ``{"skipped": true, ...}``
plus the analytic FLOPs per step (which need no GPU), and exits 0.

On a GPU, no weights are needed: latency does not depend on weight values, so every model is built
from its real configuration (``docs/reference/flux2-diffusers.md`` §4) on the ``meta`` device, cast
to bfloat16, materialised with ``to_empty(device="cuda")`` and filled with random values.

* **Transformer** (``Flux2Transformer2DModel``, 32.2 B parameters, 64.4 GB bf16): seconds per
  denoising step, i.e. one forward pass with the token counts of a 1024² edit: 512 text tokens,
  4,096 target tokens and 4,096 per 1 MP reference, for 0, 1 and 3 references. Variants: plain
  bf16 (PyTorch SDPA, the default), each attention backend that loads here, fused QKV
  projections, and regional compilation (``compile_repeated_blocks(fullgraph=True)``, last,
  because it cannot be undone), then fp8 on a freshly built transformer (``FLUX2_QUANTIZE=fp8``:
  torchao float8 weights and activations; recorded as unavailable without torchao or without
  compute capability >= 8.9).
* **Compute floor**: FLOPs per step over the measured bf16 matmul rate (``torch.matmul`` of two
  8192x8192 bf16 matrices). FLOPs per step = 2 x (weights each token passes through) + the
  attention, 4 x tokens² x (heads x head_dim) per block, for the 8 double- and 48 single-stream
  blocks. Linear layers are counted from the model's own modules: in the double-stream blocks the
  image weights see only image tokens and the text weights only text tokens, the single-stream
  blocks see all tokens, ``context_embedder`` the text tokens, ``x_embedder`` and ``proj_out`` the
  image tokens (target and references); modulation layers run once per sample. Norms, RoPE,
  activations and the softmax are not counted (a few percent at most).
* **VAE** (``AutoencoderKLFlux2``, real config): encoding one 1 MP reference and decoding one
  1024² output.
* **Text encoder**: a Mistral text model with the real text configuration trimmed to the 31
  layers FLUX.2 reads (17.9 B parameters, 35.8 GB bf16), one 512-token pass with hidden states,
  built after the transformer is freed, if the GPU has room.

Each section is written to the JSON as soon as it is done, so a run cut short keeps what it has.
``--smoke`` runs every code path on the CPU with shrunken configurations (the figures mean
nothing; it checks the script).
"""

from __future__ import annotations

import argparse
import gc
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import (
    RESULTS_DIR,
    percentile,
    progress,
    run_record,
    summary_line,
    write_csv,
    write_json,
)

NAME = "bench_gpu"
PIXELS_PER_TOKEN_SIDE = 16  # 8x VAE compression x 2x2 patches
TEXT_TOKENS = 512

TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 128,
    "num_layers": 8,
    "num_single_layers": 48,
    "attention_head_dim": 128,
    "num_attention_heads": 48,
    "joint_attention_dim": 15360,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
    "guidance_embeds": True,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 32,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
    "mid_block_add_attention": True,
    "batch_norm_eps": 1e-4,
    "batch_norm_momentum": 0.1,
    "patch_size": (2, 2),
}
# Mistral-Small-3.x text model, trimmed to the 31 decoder layers whose hidden states FLUX.2 reads.
TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 131072,
    "hidden_size": 5120,
    "intermediate_size": 32768,
    "num_hidden_layers": 31,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1e9,
    "sliding_window": None,
}
# Dense bf16 tensor-core peak from NVIDIA's data sheets (SXM parts), for the CPU-only estimate.
NOMINAL_BF16_TFLOPS = {"H100 SXM": 989.4, "H200": 989.4}
ATTENTION_BACKENDS = (
    "_native_cudnn",
    "_native_flash",
    "_native_efficient",
    "flash",
    "_flash_3",
    "sage",
    "xformers",
)
REFERENCE_COUNTS = (0, 1, 3)
BUDGET_S = 480.0  # 8 minutes on one H100/H200
#: A fast path is recommended when it is at least this much faster than bf16 at every shape.
RECOMMEND_SPEEDUP = 1.03
#: The setting that turns each measured fast path on.
SETTING_OF = {
    "fused_qkv": "FLUX2_FUSE_QKV=true",
    "compile_repeated_blocks": "FLUX2_COMPILE_BLOCKS=true",
    "fp8": "FLUX2_QUANTIZE=fp8",
}
#: Seconds a section needs at least on an H100-class GPU (what is left is checked first).
RESERVE_S = {"compile": 150.0, "fp8": 90.0, "vae": 15.0, "text_encoder": 45.0}

# Shrunken configurations for --smoke (CPU): same code paths, tiny tensors.
SMOKE_TRANSFORMER = {
    **TRANSFORMER_CONFIG,
    "num_layers": 1,
    "num_single_layers": 1,
    "num_attention_heads": 2,
    "joint_attention_dim": 96,
}
SMOKE_VAE = {**VAE_CONFIG, "block_out_channels": (8, 8, 16, 16), "norm_num_groups": 4}
SMOKE_TEXT = {
    **TEXT_CONFIG,
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}


# -- shapes and FLOPs (plain Python) ---------------------------------------------------------


@dataclass(frozen=True)
class StepShape:
    """The token counts of one denoising step of a square edit."""

    size: int = 1024
    references: int = 1
    reference_side: int = 1024  # a 1 MP reference, as fal resizes them
    text_tokens: int = TEXT_TOKENS

    @property
    def target_tokens(self) -> int:
        return (self.size // PIXELS_PER_TOKEN_SIDE) ** 2

    @property
    def reference_tokens(self) -> int:
        return self.references * (self.reference_side // PIXELS_PER_TOKEN_SIDE) ** 2

    @property
    def image_tokens(self) -> int:
        return self.target_tokens + self.reference_tokens

    @property
    def tokens(self) -> int:
        return self.text_tokens + self.image_tokens


def token_group(name: str) -> str:
    """Which tokens a Linear of ``Flux2Transformer2DModel`` sees, from its module name.

    ``text``, ``image`` (target + references), ``all`` (text + image) or ``sample`` (once per
    batch row: the timestep/guidance embedding and the shared modulation layers).
    """
    if name.startswith("single_transformer_blocks."):
        return "all"
    if name.startswith("transformer_blocks."):
        if ".ff_context." in name or ".attn.add_" in name or ".attn.to_add" in name:
            return "text"  # add_{q,k,v}_proj, to_add_out, to_added_qkv (fused), ff_context
        if ".ff." in name or ".attn.to_" in name:
            return "image"  # to_{q,k,v}, to_out, to_qkv (fused), ff
        return "sample"
    if name.startswith("context_embedder"):
        return "text"
    if name.startswith(("x_embedder", "proj_out")):
        return "image"
    return "sample"


def linear_weights_by_group(model: Any) -> dict[str, int]:
    """Weights (in x out) of every ``nn.Linear``, summed per :func:`token_group`.

    Count an unfused model: after ``fuse_qkv_projections`` both forms exist.
    """
    import torch

    groups = {"text": 0, "image": 0, "all": 0, "sample": 0}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            groups[token_group(name)] += module.in_features * module.out_features
    return groups


def step_flops(groups: dict[str, int], shape: StepShape, config: dict[str, Any]) -> dict[str, int]:
    """FLOPs of one transformer forward: linear layers plus attention (see the module doc)."""
    tokens = {"text": shape.text_tokens, "image": shape.image_tokens, "all": shape.tokens}
    linear = 2 * sum(weights * tokens.get(group, 1) for group, weights in groups.items())
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    blocks = config["num_layers"] + config["num_single_layers"]
    attention = 4 * shape.tokens**2 * inner * blocks
    return {"linear": linear, "attention": attention, "total": linear + attention}


def text_encoder_flops(
    config: dict[str, Any] = TEXT_CONFIG, tokens: int = TEXT_TOKENS, lm_head: bool = False
) -> dict[str, Any]:
    """Parameters and FLOPs of one pass of the Mistral text model, from its config.

    ``lm_head``: also count the vocabulary projection, which ``Flux2Pipeline.encode_prompt``
    computes (the full ``Mistral3ForConditionalGeneration`` forward) though it only reads hidden
    states. Attention is counted without the causal mask's saving (an upper bound; ~1 % here).
    """
    hidden, heads, kv_heads = (
        config["hidden_size"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
    )
    head_dim, layers = config["head_dim"], config["num_hidden_layers"]
    per_layer = (
        hidden * heads * head_dim  # q
        + 2 * hidden * kv_heads * head_dim  # k, v
        + heads * head_dim * hidden  # o
        + 3 * hidden * config["intermediate_size"]  # gate, up, down
    )
    linear_params = per_layer * layers + (config["vocab_size"] * hidden if lm_head else 0)
    embedding = config["vocab_size"] * hidden
    linear = 2 * linear_params * tokens
    attention = 4 * tokens**2 * heads * head_dim * layers
    return {
        "params": linear_params + embedding,
        "bf16_bytes": 2 * (linear_params + embedding),
        "flops": linear + attention,
        "linear_flops": linear,
        "attention_flops": attention,
    }


def analytic_report(config: dict[str, Any] = TRANSFORMER_CONFIG) -> dict[str, Any]:
    """FLOPs per step for 1, 2 and 4 references at 1024², from a meta-device model (no GPU)."""
    import torch
    from diffusers import Flux2Transformer2DModel

    with torch.device("meta"):
        model = Flux2Transformer2DModel(**config)
    groups = linear_weights_by_group(model)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for refs in REFERENCE_COUNTS:
        shape = StepShape(references=refs)
        flops = step_flops(groups, shape, config)
        row: dict[str, Any] = {"references": refs, "tokens": shape.tokens, **_tflop(flops)}
        for gpu, peak in NOMINAL_BF16_TFLOPS.items():
            row[f"floor_s_at_nominal_peak_{gpu.replace(' ', '_')}"] = round(
                flops["total"] / (peak * 1e12), 3
            )
        rows.append(row)
    return {
        "transformer_params": params,
        "linear_weights_by_token_group": groups,
        "per_step_1024": rows,
        "text_encoder": text_encoder_flops(),
        "nominal_bf16_tflops": NOMINAL_BF16_TFLOPS,
        "note": "nominal peaks are data-sheet figures, not measured; real matmuls reach less",
    }


def _tflop(flops: dict[str, int]) -> dict[str, float]:
    return {f"{k}_tflop": round(v / 1e12, 2) for k, v in flops.items()}


# -- measuring -------------------------------------------------------------------------------


@dataclass
class Context:
    torch: Any
    device: Any
    dtype: Any
    smoke: bool
    warmup: int
    repeats: int
    deadline: float = float("inf")  # time.monotonic() at which the budget is spent

    def left(self) -> float:
        """Seconds of the time budget left."""
        return self.deadline - time.monotonic()

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def time(self, fn: Callable[[], Any], warmup: int | None = None) -> dict[str, float]:
        """Median, min and max seconds of ``fn`` after warm-up, synchronising the GPU."""
        with self.torch.inference_mode():
            self.sync()
            for _ in range(self.warmup if warmup is None else warmup):
                fn()
            self.sync()
            times = []
            for _ in range(self.repeats):
                started = time.perf_counter()
                fn()
                self.sync()
                times.append(time.perf_counter() - started)
        return {
            "median_s": round(percentile(times, 50), 4),
            "min_s": round(min(times), 4),
            "max_s": round(max(times), 4),
        }

    def peak_gb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return round(float(self.torch.cuda.max_memory_allocated()) / 1e9, 2)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.reset_peak_memory_stats()

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()


def matmul_tflops(ctx: Context, n: int = 8192) -> dict[str, Any]:
    """The measured bf16 matmul rate: ``torch.matmul`` of two n x n matrices."""
    torch = ctx.torch
    a = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    b = torch.randn(n, n, device=ctx.device, dtype=ctx.dtype)
    timing = ctx.time(lambda: torch.matmul(a, b))
    return {"n": n, **timing, "tflops": round(2 * n**3 / timing["median_s"] / 1e12, 3)}


def init_random_(torch: Any, module: Any, seed: int = 0) -> None:
    """Fill every parameter with random values of a sane scale (values do not change latency).

    Matrices and kernels get N(0, 1/fan_in), so activations stay finite through 56 blocks;
    1-D weights (norm scales) get ones and biases zeros.
    """
    generators: dict[str, Any] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            key = str(param.device)
            if key not in generators:
                generators[key] = torch.Generator(device=param.device).manual_seed(seed)
            if param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5, generator=generators[key])
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)


def materialise(ctx: Context, model: Any) -> Any:
    """A meta-device model in ``ctx.dtype`` on ``ctx.device``, with random weights."""
    model = model.to(dtype=ctx.dtype)
    model = model.to_empty(device=ctx.device)
    init_random_(ctx.torch, model)
    return model.eval().requires_grad_(False)


def step_inputs(ctx: Context, shape: StepShape, config: dict[str, Any]) -> dict[str, Any]:
    """The transformer's keyword arguments for one step, ids built as ``Flux2Pipeline`` does."""
    from diffusers import Flux2Pipeline

    torch = ctx.torch
    side = shape.size // PIXELS_PER_TOKEN_SIDE
    ref_side = shape.reference_side // PIXELS_PER_TOKEN_SIDE
    latent_ids = Flux2Pipeline._prepare_latent_ids(torch.empty(1, 1, side, side))
    ids = [latent_ids]
    if shape.references:
        refs = [torch.empty(1, 1, ref_side, ref_side) for _ in range(shape.references)]
        ids.append(Flux2Pipeline._prepare_image_ids(refs).reshape(1, -1, 4))
    img_ids = torch.cat(ids, dim=1).to(ctx.device)
    text_ids = Flux2Pipeline._prepare_text_ids(torch.empty(1, shape.text_tokens, 1)).to(ctx.device)
    if img_ids.shape[1] != shape.image_tokens or text_ids.shape[1] != shape.text_tokens:
        raise RuntimeError(f"ids {img_ids.shape}, {text_ids.shape} do not match {shape}")
    return {
        "hidden_states": torch.randn(
            1, shape.image_tokens, config["in_channels"], device=ctx.device, dtype=ctx.dtype
        ),
        "encoder_hidden_states": torch.randn(
            1, shape.text_tokens, config["joint_attention_dim"], device=ctx.device, dtype=ctx.dtype
        ),
        "timestep": torch.full((1,), 0.5, device=ctx.device, dtype=ctx.dtype),
        "guidance": torch.full((1,), 2.5, device=ctx.device, dtype=torch.float32),
        "img_ids": img_ids,
        "txt_ids": text_ids,
        "return_dict": False,
    }


def bench_transformer(
    ctx: Context,
    args: argparse.Namespace,
    config: dict[str, Any],
    shapes: list[StepShape],
    rate_tflops: float,
    rows: list[dict[str, Any]],
    saved: Callable[[], None],
) -> None:
    """Seconds per step for each variant and shape, appended to ``rows`` as they come."""
    from diffusers import Flux2Transformer2DModel

    torch = ctx.torch
    started = time.perf_counter()
    with torch.device("meta"):
        model = Flux2Transformer2DModel(**config)
    model = materialise(ctx, model)
    progress(f"transformer built in {time.perf_counter() - started:.1f} s")
    groups = linear_weights_by_group(model)  # before any fusing
    inputs = {shape: step_inputs(ctx, shape, config) for shape in shapes}

    def over_budget(variant: str, reserve: float = 0.0) -> bool:
        """Record ``variant`` as skipped when less than ``reserve`` s of the budget is left."""
        if ctx.left() > reserve:
            return False
        rows.append({"variant": variant, "skipped": f"time budget ({ctx.left():.0f} s left)"})
        saved()
        progress(f"{variant}: skipped, {ctx.left():.0f} s of the budget left")
        return True

    def measure(variant: str, first_call: bool = False) -> None:
        if not variant.startswith("attention:") and over_budget(variant):
            return
        for shape in shapes:
            flops = step_flops(groups, shape, config)
            row: dict[str, Any] = {
                "variant": variant,
                "references": shape.references,
                "tokens": shape.tokens,
                "tflop_per_step": round(flops["total"] / 1e12, 2),
                "floor_s": round(flops["total"] / (rate_tflops * 1e12), 4),
            }
            ctx.reset_peak()
            try:
                if first_call:  # compile happens here
                    with torch.inference_mode():
                        mark = time.perf_counter()
                        model(**inputs[shape])
                        ctx.sync()
                    row["first_call_s"] = round(time.perf_counter() - mark, 2)
                timing = ctx.time(partial(model, **inputs[shape]))
                row["s_per_step"] = timing["median_s"]
                row["min_s"], row["max_s"] = timing["min_s"], timing["max_s"]
                row["efficiency"] = round(row["floor_s"] / timing["median_s"], 3)
                row["achieved_tflops"] = round(flops["total"] / timing["median_s"] / 1e12, 3)
            except Exception as exc:  # an unusable backend or out of memory: record, go on
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                ctx.free()
            row["peak_gb"] = ctx.peak_gb()
            rows.append(row)
            saved()
            progress(
                f"{variant}, {shape.references} ref(s): "
                + (f"{row['s_per_step']:.3f} s/step" if "s_per_step" in row else row["error"])
            )

    measure("bf16")
    if "backends" in args.variants:
        for backend in args.backends:
            if over_budget(f"attention:{backend}"):
                continue
            try:
                model.set_attention_backend(backend)
            except Exception as exc:
                rows.append(
                    {
                        "variant": f"attention:{backend}",
                        "error": f"unavailable: {type(exc).__name__}: {str(exc)[:200]}",
                    }
                )
                saved()
                continue
            measure(f"attention:{backend}")
            model.set_attention_backend("native")
    if "fused_qkv" in args.variants:
        try:
            model.fuse_qkv_projections()
            measure("fused_qkv")
        finally:
            model.unfuse_qkv_projections()
            ctx.free()
    if "compile" in args.variants and not over_budget(
        "compile_repeated_blocks", 0 if ctx.smoke else RESERVE_S["compile"]
    ):
        import torch._dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
        model.compile_repeated_blocks(fullgraph=True)
        measure("compile_repeated_blocks", first_call=True)
    if "fp8" in args.variants and not over_budget("fp8", 0 if ctx.smoke else RESERVE_S["fp8"]):
        # a fresh transformer: quantizing cannot be undone
        from pipelines.flux2 import _check_quantize, _quantize_fp8

        del model
        torch._dynamo.reset()
        ctx.free()
        try:
            _check_quantize("fp8", ctx.device)
        except Exception as exc:  # no torchao, or a GPU without float8 tensor cores
            rows.append({"variant": "fp8", "error": f"unavailable: {exc}"})
            saved()
            progress(f"fp8: unavailable ({exc})")
            return
        with torch.device("meta"):
            model = Flux2Transformer2DModel(**config)
        model = materialise(ctx, model)
        _quantize_fp8(model, ctx.device)  # exactly what FLUX2_QUANTIZE=fp8 does
        measure("fp8")


def bench_vae(ctx: Context, config: dict[str, Any], side: int) -> dict[str, Any]:
    from diffusers import AutoencoderKLFlux2

    torch = ctx.torch
    with torch.device("meta"):
        vae = AutoencoderKLFlux2(**config)
    vae = materialise(ctx, vae)
    for name, buffer in vae.named_buffers():  # BatchNorm statistics: mean 0, variance 1
        if name.endswith("running_var"):
            buffer.fill_(1.0)
        elif buffer.is_floating_point():
            buffer.zero_()
        else:
            buffer.zero_()
    image = torch.randn(1, 3, side, side, device=ctx.device, dtype=ctx.dtype)
    latent = torch.randn(
        1, config["latent_channels"], side // 8, side // 8, device=ctx.device, dtype=ctx.dtype
    )
    ctx.reset_peak()
    encode = ctx.time(lambda: vae.encode(image).latent_dist.mode())
    decode = ctx.time(lambda: vae.decode(latent, return_dict=False)[0])
    result = {
        "params": sum(p.numel() for p in vae.parameters()),
        "side": side,
        "encode_s": encode["median_s"],
        "decode_s": decode["median_s"],
        "peak_gb": ctx.peak_gb(),
    }
    return result


def bench_text_encoder(ctx: Context, config: dict[str, Any], tokens: int) -> dict[str, Any]:
    from transformers import MistralConfig, MistralModel

    torch = ctx.torch
    sizes = text_encoder_flops(config, tokens)
    if ctx.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        if free < sizes["bf16_bytes"] * 1.1 + 4e9:
            return {"skipped": f"needs ~{sizes['bf16_bytes'] / 1e9:.0f} GB, {free / 1e9:.0f} free"}
    mistral_config = MistralConfig(**config)
    with torch.device("meta"):
        model = MistralModel(mistral_config)
    model = materialise(ctx, model)
    with torch.device(ctx.device):  # RoPE frequencies are buffers: rebuild them for real
        model.rotary_emb = type(model.rotary_emb)(mistral_config)
    input_ids = torch.randint(0, config["vocab_size"], (1, tokens), device=ctx.device)
    mask = torch.ones_like(input_ids)
    ctx.reset_peak()
    timing = ctx.time(
        lambda: model(
            input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False
        )
    )
    return {
        "layers": config["num_hidden_layers"],
        "tokens": tokens,
        "params": sizes["params"],
        "tflop": round(sizes["flops"] / 1e12, 2),
        "pass_s": timing["median_s"],
        "achieved_tflops": round(sizes["flops"] / timing["median_s"] / 1e12, 3),
        "peak_gb": ctx.peak_gb(),
    }


# -- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, report: dict[str, Any], save: Callable[[], None]) -> None:
    import diffusers.utils.logging
    import torch
    import torch._dynamo

    diffusers.utils.logging.set_verbosity_error()  # "modules that should be kept in float32: []"
    smoke = args.smoke
    ctx = Context(
        torch=torch,
        device=torch.device("cpu" if smoke else "cuda"),
        dtype=torch.bfloat16,
        smoke=smoke,
        warmup=args.warmup,
        repeats=args.repeats,
        deadline=time.monotonic() + args.budget_s,
    )
    transformer_config = SMOKE_TRANSFORMER if smoke else TRANSFORMER_CONFIG
    size, reference_side, text_tokens = (64, 64, 8) if smoke else (1024, 1024, TEXT_TOKENS)
    shapes = [
        StepShape(size=size, references=r, reference_side=reference_side, text_tokens=text_tokens)
        for r in args.refs
    ]
    report["device"] = torch.cuda.get_device_name() if not smoke else "cpu (smoke)"
    report["settings"] = {
        "dtype": "bfloat16",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "variants": args.variants,
        "backends": args.backends,
        "shapes": [asdict(s) | {"tokens": s.tokens} for s in shapes],
        "transformer_config": {
            k: list(v) if isinstance(v, tuple) else v for k, v in transformer_config.items()
        },
    }
    report["matmul"] = matmul_tflops(ctx, 512 if smoke else 8192)
    ctx.free()
    save()
    progress(f"bf16 matmul: {report['matmul']['tflops']} TFLOP/s")
    rows: list[dict[str, Any]] = []
    report["transformer"] = rows
    vae_config = SMOKE_VAE if smoke else VAE_CONFIG
    text_config = SMOKE_TEXT if smoke else TEXT_CONFIG
    for section in ("transformer", "vae", "text_encoder"):
        if (section == "vae" and args.no_vae) or (
            section == "text_encoder" and args.no_text_encoder
        ):
            continue
        if not smoke and ctx.left() < RESERVE_S.get(section, 0.0):
            report[section] = {"skipped": f"time budget ({ctx.left():.0f} s left)"}
            progress(f"{section}: skipped, {ctx.left():.0f} s of the budget left")
            continue
        try:
            if section == "transformer":
                bench_transformer(
                    ctx, args, transformer_config, shapes, report["matmul"]["tflops"], rows, save
                )
            elif section == "vae":
                report["vae"] = bench_vae(ctx, vae_config, size)
            else:
                report["text_encoder"] = bench_text_encoder(ctx, text_config, text_tokens)
        except Exception as exc:  # keep going: the other sections still mean something
            report.setdefault("errors", {})[section] = traceback.format_exception_only(exc)[
                -1
            ].strip()
            progress(f"{section} failed: {report['errors'][section]}")
        if section == "transformer" and {"compile", "fp8"} & set(args.variants):
            torch._dynamo.reset()  # drop compiled graphs before the next model is built
        ctx.free()
        save()


def speedups(report: dict[str, Any]) -> dict[str, dict[int, float]]:
    """Each fast path's speed-up over plain bf16 (bf16 s/step over its s/step), per reference
    count, for the variants timed at every shape bf16 was."""
    rows = [r for r in report.get("transformer", []) if "s_per_step" in r]
    base = {r["references"]: r["s_per_step"] for r in rows if r["variant"] == "bf16"}
    found: dict[str, dict[int, float]] = {}
    for row in rows:
        if row["variant"] != "bf16" and row["references"] in base:
            found.setdefault(row["variant"], {})[row["references"]] = round(
                base[row["references"]] / row["s_per_step"], 3
            )
    return {name: ups for name, ups in found.items() if set(ups) == set(base)}


def recommendations(report: dict[str, Any]) -> list[str]:
    """The settings worth turning on: fast paths at least :data:`RECOMMEND_SPEEDUP` faster than
    bf16 at every reference count (the best attention backend only; each alone against bf16,
    so confirm a combination with a second run)."""
    wins = {
        name: min(ups.values())
        for name, ups in speedups(report).items()
        if min(ups.values()) >= RECOMMEND_SPEEDUP
    }
    chosen = []
    backends = {n: w for n, w in wins.items() if n.startswith("attention:")}
    if backends:
        best = max(backends, key=lambda name: backends[name])
        chosen.append(f"FLUX2_ATTENTION_BACKEND={best.split(':', 1)[1]}")
    chosen += [SETTING_OF[name] for name in SETTING_OF if name in wins]
    return chosen


def summary(report: dict[str, Any]) -> str:
    rows = [r for r in report.get("transformer", []) if "s_per_step" in r]
    base = {r["references"]: r for r in rows if r["variant"] == "bf16"}
    parts = [f"{report.get('device')}: matmul {report.get('matmul', {}).get('tflops')} TFLOP/s"]
    if base:
        parts.append(
            "bf16 s/step "
            + ", ".join(
                f"{refs} ref {r['s_per_step']:.3f} ({100 * r['efficiency']:.0f} % of floor, "
                f"{r['peak_gb']} GB)"
                for refs, r in sorted(base.items())
            )
        )
    for name, ups in speedups(report).items():
        parts.append(f"{name} x" + "/".join(f"{ups[refs]:.2f}" for refs in sorted(ups)))
    parts.append("recommend: " + (", ".join(recommendations(report)) or "none (bf16 as is)"))
    vae = report.get("vae", {})
    if "encode_s" in vae:
        parts.append(f"VAE encode {vae['encode_s']:.3f} s, decode {vae['decode_s']:.3f} s")
    text = report.get("text_encoder", {})
    if "pass_s" in text:
        parts.append(f"text encoder {text['pass_s']:.3f} s")
    skipped = [r["variant"] for r in report.get("transformer", []) if "skipped" in r]
    skipped += [k for k in ("vae", "text_encoder") if "skipped" in report.get(k, {})]
    if skipped:
        parts.append(f"skipped for time: {', '.join(skipped)}")
    if report.get("errors"):
        parts.append(f"errors in {', '.join(report['errors'])}")
    parts.append(f"{report.get('elapsed_s', 0):.0f} s")
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=int, nargs="+", default=list(REFERENCE_COUNTS))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["backends", "fused_qkv", "compile", "fp8"],
        choices=["backends", "fused_qkv", "compile", "fp8"],
        help="fast paths measured after plain bf16",
    )
    parser.add_argument("--backends", nargs="+", default=list(ATTENTION_BACKENDS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--budget-s", type=float, default=BUDGET_S, help="time budget in seconds (480)"
    )
    parser.add_argument("--no-vae", action="store_true")
    parser.add_argument("--no-text-encoder", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU dry run with tiny configs")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "gpu.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub kernels cannot download: fail fast
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    import torch

    if not torch.cuda.is_available() and not args.smoke:
        report = {"skipped": True, "reason": "no CUDA device", **run_record(NAME)}
        try:
            report["analytic"] = analytic_report()
        except Exception as exc:  # the skip must stay clean whatever happens here
            report["analytic_error"] = f"{type(exc).__name__}: {exc}"
        write_json(args.out, report)
        summary_line(NAME, "skipped: no CUDA device")
        return 0

    started = time.monotonic()
    report = run_record(NAME, ("torch", "diffusers", "transformers"))
    report["skipped"] = False

    def save() -> None:
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        write_json(args.out, report)
        if report.get("transformer"):
            write_csv(args.out.with_suffix(".csv"), report["transformer"])

    run(args, report, save)
    report["speedups"] = {
        name: {str(k): v for k, v in ups.items()} for name, ups in speedups(report).items()
    }
    report["recommend"] = recommendations(report)
    save()
    summary_line(NAME, summary(report))
    return 1 if report.get("errors") else 0


if __name__ == "__main__":
    raise SystemExit(main())
