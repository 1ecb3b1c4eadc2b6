"""RunInference's ModelHandler for alexlabel checkpoints: batches of ImageFiles -> top-k predictions.

The handler holds only the checkpoint URL and settings (it is pickled to workers); each worker loads
the weights with weights_only=True, builds the architecture named in the manifest, and folds the
manifest's normalization into the first convolution, so a batch goes in as raw pixels with one cast.
With --precision int8 the network is beam_pipeline/int8.py's instead, built from the same folded module and the
ranges the checkpoint carries, and the batch goes in as uint8. Softmax uses the checkpoint's calibrated
temperature. With embeddings asked for, the same forward pass also gives the penultimate activations, which the
checkpoint's projection turns into embeddings: one matrix multiply per batch, on the model's device.
"""
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from apache_beam.metrics import Metrics

from beam_pipeline.decode import ImageFile, decode_batch
from beam_pipeline.fingerprint import fingerprints
from beam_pipeline.heap import trim_heap
from beam_pipeline.inference import ModelHandler, PredictionResult
from beam_pipeline.int8 import build_int8
from beam_pipeline.lean_layers import lean_for_inference
from beam_pipeline.raw_pixels import fold_normalization
from beam_pipeline.rows import Failure, Prediction
from common.devices import pick_device
from common.errors import first_line
from schemas.checkpoint import CheckpointError, Manifest, Projection, refit_advice
from schemas.transform import Preprocess
from trainer.models import features_and_logits, load_model

PASSED_ENCODED = Metrics.counter("alexlabel", "passed_encoded")  # JPEGs for the batch decoder (--gpu-decode)


@dataclass
class Classifier:
    module: torch.nn.Module
    manifest: Manifest
    device: torch.device
    dtype: torch.dtype  # of the weights and the input batches (uint8: the int8 network's input)
    projection: Projection | None  # on `device`, float32; None: the checkpoint carries none


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs and on CPUs with native bf16 (AVX512-BF16/AMX), fp32 elsewhere. int8 (CPUs only) is
    the network's input dtype: uint8 pixels."""
    if precision == "int8":
        return torch.uint8
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    native = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if native else torch.float32


def load_classifier(checkpoint: str, device: str = "cpu", precision: str = "auto") -> Classifier:
    module, manifest, projection, int8 = load_model(checkpoint)
    try:
        module = fold_normalization(module, manifest.preprocess)
    except ValueError as e:
        raise CheckpointError(f"checkpoint {checkpoint}: {e}; re-export it") from None
    torch_device = pick_device(device)
    dtype = resolve_precision(precision, torch_device)
    if dtype == torch.uint8:
        module = int8_network(checkpoint, module, int8, manifest, torch_device)
    else:
        if torch_device.type == "cpu":  # measured there (~8% of a one-thread forward), not yet on GPUs
            module = lean_for_inference(module)
        # Weights stored in bf16 once, not autocast: autocast re-casts all ~60M weights on every batch, which
        # on a CPU costs more than the convolutions themselves (AlexNet: 3x the throughput without it).
        module = module.to(torch_device, dtype=dtype, memory_format=torch.channels_last).eval()
    return Classifier(module, manifest, torch_device, dtype, projection and projection.to(torch_device))


def int8_network(checkpoint: str, module: torch.nn.Module, ranges: torch.Tensor | None, manifest: Manifest,
                 device: torch.device) -> torch.nn.Module:
    if device.type != "cpu":
        raise CheckpointError(f"--precision int8 runs on CPUs, and this job labels on {device.type}; use "
                              "--precision bf16 there")
    if ranges is None:
        raise CheckpointError(f"--precision int8 needs a checkpoint with int8 ranges, and {checkpoint} has none; fit "
                              f"them with `{refit_advice(checkpoint)}`")
    try:
        return build_int8(module, ranges, manifest.preprocess.crop)
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {checkpoint}: no int8 network on this machine ({first_line(e)}); "
                              "label with --precision auto") from None


# The launcher loads the model up front (every checkpoint error before any input is read). With the
# DirectRunner its worker threads live in the same process and take that copy instead of loading it again, as do
# those of every slice of a sliced job: one load fewer (about a second of every local run, and of every slice),
# one copy of the weights in memory however many slices run.
_kept: dict[tuple[str, str, str], Classifier] = {}


def check_checkpoint(checkpoint: str, device: str, precision: str, keep: bool, embeddings: bool = False) -> Manifest:
    """Load the checkpoint as a worker would (with `embeddings`, one that has a projection); with `keep`, leave the
    model for a worker in this process."""
    classifier = load_classifier(checkpoint, device, precision)
    if embeddings and classifier.projection is None:
        raise CheckpointError(no_projection(checkpoint))
    if keep:
        _kept[(checkpoint, device, precision)] = classifier
    return classifier.manifest


def drop_kept() -> None:
    """Forget a kept model no worker took (a failed start, workers in other processes)."""
    _kept.clear()


def to_batch(images: list[torch.Tensor], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """CHW uint8 images -> one channels_last NCHW batch of `dtype` on `device`.

    The images stack as they are, one plain copy; the cast and the turn into channels_last are one more copy, on
    the model's device. Stacking as HWC views instead would do that turn on the CPU, where on a GPU worker it was
    one of the larger costs (BENCHMARKS.md, "GPU feed ceiling"). To a GPU the batch goes as uint8 from page-locked
    memory, overlapping the GPU's work. With --gpu-decode some images are on the device already: the rest go over
    that way, then all stack there.
    """
    host = [image for image in images if image.device.type == "cpu"]
    if len(host) == len(images):
        x = _send(torch.stack(images), device)
    else:
        sent = iter(_send(torch.stack(host), device) if host else ())
        x = torch.stack([next(sent) if image.device.type == "cpu" else image for image in images])
    return x.to(dtype, memory_format=torch.channels_last)


def _send(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x


def no_projection(checkpoint: str) -> str:
    return (f"--embeddings needs a checkpoint with an embedding projection, and {checkpoint} has none; fit one with "
            f"`{refit_advice(checkpoint)}`")



def half_rows(x: torch.Tensor) -> list:
    """A batch's vectors as float16 numpy rows (what the embeddings and probabilities tables store)."""
    return list(x.to(torch.float16).cpu().numpy())


class AlexNetModelHandler(ModelHandler[ImageFile, PredictionResult, Classifier]):
    def __init__(self, checkpoint: str, *, device: str = "cpu", precision: str = "auto", top_k: int = 5,
                 embeddings: bool = False, probabilities: bool = False,
                 min_batch_size: int = 1, max_batch_size: int = 64, model_copies: int | None = None,
                 preprocess: Preprocess | None = None, threads: int = 0):
        # model_copies: exactly that many copies per machine, shared by its worker processes (one per GPU).
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size, model_copies=model_copies)
        self._checkpoint, self._device, self._precision, self._top_k = checkpoint, device, precision, top_k
        self._default_checkpoint, self._preprocess, self._threads = checkpoint, preprocess, threads
        self._embeddings, self._probabilities = embeddings, probabilities

    def load_model(self) -> Classifier:
        if self._threads:  # per process; 0 leaves torch's default (all cores)
            torch.set_num_threads(self._threads)
        key = (self._checkpoint, self._device, self._precision)
        classifier = _kept.get(key) or load_classifier(*key)
        if self._preprocess and classifier.manifest.preprocess != self._preprocess:
            # Images were prepared for the first model; a swapped-in one must expect the same input.
            raise CheckpointError(f"checkpoint {self._checkpoint} expects preprocessing "
                                  f"{classifier.manifest.preprocess} but this job prepares {self._preprocess}; "
                                  "swap only models trained with the same image size, mean and std")
        if self._embeddings and classifier.projection is None:
            raise CheckpointError(no_projection(self._checkpoint))
        return classifier

    def run_inference(self, batch: Sequence[ImageFile], model: Classifier,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        """A Prediction per image, or a Failure: the image's own from before (read, decode), one from here (a
        JPEG that no decoder reads), or the batch's (the model failed: a failing GPU, out of memory). Every
        result names this model's version, the one that was live when the image came."""
        outcomes = [image.failure for image in batch]
        ready = [i for i, failure in enumerate(outcomes) if failure is None]
        try:
            predictions = self._predict([batch[i].pixels for i in ready], model) if ready else []
        except Exception as e:  # the batch failed as a whole: an infer error row for each of its images
            predictions = [Failure.of("infer", e)] * len(ready)
        for i, prediction in zip(ready, predictions, strict=True):
            outcomes[i] = prediction
        version = model.manifest.model_version
        return [PredictionResult(image, outcome, version) for image, outcome in zip(batch, outcomes, strict=True)]

    def _predict(self, pixels: list[torch.Tensor], model: Classifier) -> list[Prediction | Failure]:
        PASSED_ENCODED.inc(sum(p.dim() == 1 for p in pixels))
        images = decode_batch(pixels, model.manifest.preprocess, model.device)
        outcomes = [Failure.of("decode", image) if isinstance(image, Exception) else None for image in images]
        good = [i for i, outcome in enumerate(outcomes) if outcome is None]
        if not good:
            return outcomes
        x = to_batch([images[i] for i in good], model.device, model.dtype)  # pixels 0-255, exact in bf16 and uint8
        with torch.inference_mode():
            if self._embeddings:
                features, logits = features_and_logits(model.module, x)
                embeddings = half_rows(model.projection(features.float()))
                prints = half_rows(fingerprints(x))
            else:
                logits, embeddings = model.module(x), [None] * len(good)
                prints = embeddings
            probs = (logits.float() / model.manifest.temperature).softmax(dim=1)
        confidences, indices = probs.topk(min(self._top_k, probs.shape[1]), dim=1)
        confidences, indices = confidences.cpu().tolist(), indices.cpu().tolist()
        full = half_rows(probs) if self._probabilities else [None] * len(good)
        trim_heap()  # this batch's activations are free now: keep memory flat over long runs
        names = model.manifest.class_names
        for i, idx, conf, emb, fp, prob in zip(good, indices, confidences, embeddings, prints, full, strict=True):
            outcomes[i] = Prediction(idx, conf, [names[c] for c in idx], emb, fp, prob)
        return outcomes

    def get_num_bytes(self, batch: Sequence[ImageFile]) -> int:
        """For RunInference's byte metrics: the pixels' size (Beam's default pickles the whole batch)."""
        return sum(image.pixels.nbytes for image in batch if image.pixels is not None)

    def update_model_path(self, model_path: str | None = None):
        """A model side input names the checkpoint to swap in; an empty one means the job's own."""
        self._checkpoint = model_path or self._default_checkpoint

    def get_metrics_namespace(self) -> str:
        return "alexlabel"
