"""Layouts, their settings and options, and the memory plan of a group (no processes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from benchmarks.memory_table import table
from core.errors import ConfigError
from pipelines.layout import ParallelLayout, check_group, parse_gpus, parse_layout
from pipelines.memory import (
    FLUX2_DEV,
    GB,
    MIN_HEADROOM,
    ComponentSizes,
    MemoryProfile,
    activation_headroom,
    measure_checkpoint,
    plan_group,
    rank_needs,
    transformer_share,
)
from service.cli import build_parser, settings_from_args
from service.settings import Settings

ULYSSES_2 = ParallelLayout("ulysses", 2)
TP_4 = ParallelLayout("tp", 4)
OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FLUX2_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLUX2_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ulysses:2", ULYSSES_2),
        (" TP:4 ", TP_4),
        ("ulysses:8", ParallelLayout("ulysses", 8)),
        ("none", None),
        ("", None),
        (None, None),
    ],
)
def test_layouts_parse(text: str | None, expected: ParallelLayout | None) -> None:
    assert parse_layout(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ulysses:1", "at least 2"),
        ("ring:2", "use ulysses:N, tp:N"),
        ("ulysses", "use ulysses:N, tp:N"),
        ("tp:two", "use ulysses:N, tp:N"),
        ("ulysses:2,tp:2", "cannot combine"),
    ],
)
def test_bad_layouts_say_what_works(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_layout(text)


def test_gpus_parse_and_go_with_a_layout_of_their_length() -> None:
    assert parse_gpus("0, 1,3") == (0, 1, 3)
    assert parse_gpus("") is None
    for bad in ("0,,1", "a,b", "1,1"):
        with pytest.raises(ConfigError):
            parse_gpus(bad)
    check_group(ULYSSES_2, (2, 3))
    check_group(ULYSSES_2, None)
    with pytest.raises(ConfigError, match="lists 1"):
        check_group(ULYSSES_2, (0,))
    with pytest.raises(ConfigError, match="parallel is not"):
        check_group(None, (0, 1))


def test_settings_read_and_check_the_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUX2_PARALLEL", "tp:2")
    monkeypatch.setenv("FLUX2_GPUS", "2,3")
    engine = Settings().engine
    assert (engine.parallel, engine.gpus) == ("tp:2", "2,3")
    for bad in (
        {"parallel": "ulysses:1"},
        {"gpus": "0,1,2"},
        {"parallel": "ulysses:2", "device": "cuda:1"},
    ):
        monkeypatch.delenv("FLUX2_GPUS", raising=False)
        with pytest.raises(ValidationError):
            Settings(**bad)


@pytest.mark.parametrize("command", ["serve", "worker", "edit"])
def test_parallel_and_gpus_are_command_line_options(command: str) -> None:
    extra = ["--image", "x.png", "--prompt", "p"] if command == "edit" else []
    args = build_parser().parse_args(
        [command, "--model", "tiny", "--parallel", "ulysses:2", "--gpus", "0,1", *extra]
    )
    engine = settings_from_args(args).engine
    assert (engine.parallel, engine.gpus) == ("ulysses:2", "0,1")


# -- memory -------------------------------------------------------------------------------------


def test_ulysses_replicates_the_transformer_and_tp_divides_what_its_plan_splits() -> None:
    assert transformer_share(FLUX2_DEV, ULYSSES_2) == FLUX2_DEV.transformer
    assert transformer_share(FLUX2_DEV, None) == FLUX2_DEV.transformer
    replicated = FLUX2_DEV.transformer - (FLUX2_DEV.transformer_tp_sharded or 0)
    assert replicated == 1_632_665_600  # modulation, embedders, norms, proj_out: 1.6 GB
    share = transformer_share(FLUX2_DEV, TP_4)
    assert share == replicated + (FLUX2_DEV.transformer_tp_sharded or 0) // 4
    assert 17.3 * GB < share < 17.4 * GB


def test_rank_0_holds_the_text_encoder_the_vae_and_the_prompt_cache() -> None:
    ranks = rank_needs(MemoryProfile.RESIDENT, FLUX2_DEV, TP_4, extra_bytes=GB)
    first, *others = ranks
    assert len(ranks) == 4
    assert first.text_encoder == FLUX2_DEV.text_encoder and first.vae == FLUX2_DEV.vae
    headroom = activation_headroom(FLUX2_DEV) // 4 + 1  # a quarter, rounded up
    assert first.headroom == headroom + GB
    assert all(r.text_encoder == r.vae == 0 and r.headroom == headroom for r in others)
    offloaded = rank_needs(MemoryProfile.OFFLOAD_TEXT_ENCODER, FLUX2_DEV, TP_4)
    assert offloaded[0].text_encoder == 0
    tiny = ComponentSizes(400_000, 500_000, 300_000)
    assert rank_needs(MemoryProfile.RESIDENT, tiny, ULYSSES_2)[1].headroom == MIN_HEADROOM


def test_the_group_plan_moves_the_text_encoder_off_gpu_0_when_it_does_not_fit() -> None:
    roomy = plan_group([141 * GB] * 2, FLUX2_DEV, ULYSSES_2)
    assert roomy.profile is MemoryProfile.RESIDENT and roomy.fits
    tight = plan_group([80 * GB] * 2, FLUX2_DEV, ULYSSES_2)
    assert tight.profile is MemoryProfile.OFFLOAD_TEXT_ENCODER and tight.fits
    assert tight.lines()[0].startswith("rank 0 needs ~71.1 GB (transformer 64.4 GB, VAE")
    assert tight.lines()[1].endswith("of 80.0 GB free")
    small = plan_group([48 * GB] * 2, FLUX2_DEV, ULYSSES_2)
    assert not small.fits and "nothing fits" in small.reason
    assert plan_group([24 * GB] * 4, FLUX2_DEV, TP_4).fits  # what TP is for
    uneven = plan_group([141 * GB, 80 * GB], FLUX2_DEV, ULYSSES_2)  # the smaller GPU is rank 1
    assert uneven.profile is MemoryProfile.RESIDENT


def test_the_group_plan_refuses_what_a_group_cannot_do() -> None:
    with pytest.raises(ConfigError, match="cannot be used with parallel"):
        plan_group([80 * GB] * 2, FLUX2_DEV, ULYSSES_2, override="model_offload")
    with pytest.raises(ConfigError, match="needs 2 GPUs"):
        plan_group([80 * GB], FLUX2_DEV, ULYSSES_2)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        plan_group(None, FLUX2_DEV, ULYSSES_2, override="resident")
    assert plan_group(None, FLUX2_DEV, ULYSSES_2).profile is MemoryProfile.CPU
    forced = plan_group([48 * GB] * 2, FLUX2_DEV, ULYSSES_2, override="resident")
    assert forced.profile is MemoryProfile.RESIDENT and not forced.fits


def test_tp_sizes_from_headers_match_diffusers_plan(tiny_checkpoint: Path) -> None:
    import torch
    from diffusers import Flux2Transformer2DModel
    from diffusers.hooks.tensor_parallel import resolve_tp_shard_specs

    plan = Flux2Transformer2DModel._tp_plan
    sizes = measure_checkpoint(tiny_checkpoint, tp_patterns=tuple(plan))
    model = Flux2Transformer2DModel.from_pretrained(tiny_checkpoint, subfolder="transformer")
    params = dict(model.named_parameters())
    sharded = sum(
        params[name].numel() * params[name].element_size()
        for name, spec in resolve_tp_shard_specs(model, plan, 2).items()
        if spec.dim is not None
    )
    assert sizes.transformer_tp_sharded == sharded > 0
    with torch.device("meta"):  # and the constant for FLUX.2 [dev] is what its config gives
        from benchmarks.bench_gpu import TRANSFORMER_CONFIG

        dev = Flux2Transformer2DModel(**TRANSFORMER_CONFIG)
    dev_params = dict(dev.named_parameters())
    assert FLUX2_DEV.transformer == 2 * sum(p.numel() for p in dev_params.values())
    assert FLUX2_DEV.transformer_tp_sharded == 2 * sum(
        dev_params[name].numel()
        for name, spec in resolve_tp_shard_specs(dev, plan, 2).items()
        if spec.dim is not None
    )


def test_the_operations_guide_carries_the_computed_layout_table() -> None:
    assert table() in OPERATIONS.read_text()
