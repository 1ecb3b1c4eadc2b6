"""URI -> (image metadata, uint8 tensor) as the checkpoint's preprocess asks, or an error record."""
import hashlib
import struct

import apache_beam as beam
import torch
from apache_beam.metrics import Metrics

from beam_pipeline.heap import bound_heap
from beam_pipeline.read import read_uri
from schemas.preprocess import Preprocess, eval_tensor_from_bytes
from schemas.redact import redact

ERRORS_TAG = "errors"


def error_record(uri: str, stage: str, exc: BaseException, size_bytes: int | None = None) -> dict:
    """The part of an errors row known where the failure happened; the run stamps the rest."""
    message = redact(" ".join(str(exc).split()) or type(exc).__name__)
    return {"uri": redact(uri), "stage": stage, "error_type": type(exc).__name__, "message": message[:1000],
            "size_bytes": size_bytes}


class PixelsCoder(beam.coders.Coder):
    """uint8 image tensors as shape + bytes, sized by their byte count.

    Beam samples the size of elements as they pass between transforms by encoding them; with its default
    coder that pickled every decoded image (0.08 ms each, ~2% of the run). Where a runner does move images
    between workers, this encoding is also smaller and faster than a pickle.
    """

    def encode(self, pixels: torch.Tensor) -> bytes:
        shape = tuple(pixels.shape)
        return struct.pack(f"<B{len(shape)}I", len(shape), *shape) + pixels.contiguous().numpy().tobytes()

    def decode(self, encoded: bytes) -> torch.Tensor:
        ndim = encoded[0]
        shape = struct.unpack_from(f"<{ndim}I", encoded, 1)
        return torch.frombuffer(bytearray(encoded[1 + 4 * ndim:]), dtype=torch.uint8).reshape(shape)

    def estimate_size(self, pixels: torch.Tensor) -> int:
        return 1 + 4 * pixels.dim() + pixels.numel()

    def is_deterministic(self) -> bool:
        return True


beam.coders.registry.register_coder(torch.Tensor, PixelsCoder)


@beam.typehints.with_output_types(tuple[dict, torch.Tensor])
class PrepareImage(beam.DoFn):
    """Read, decode (JPEG draft mode, EXIF orientation, bomb check), resize and crop on uint8.

    Each failure becomes a tagged error record naming the stage: read, or decode (which covers resizing).
    With `keep_jpegs` (--gpu-decode), the JPEGs that decode straight into a tensor pass on still encoded
    (1-D tensors); the model handler decodes them in batches on its device.
    """

    def __init__(self, preprocess: Preprocess, keep_jpegs: bool = False):
        self.preprocess, self.keep_jpegs = preprocess, keep_jpegs  # keep_jpegs: --gpu-decode
        self.failed = Metrics.counter("alexlabel", "errored_before_inference")

    def setup(self):
        # No new malloc arenas from here on. Arenas made before stay, so the label command sets this at its
        # start and the worker image by environment (MALLOC_ARENA_MAX in Dockerfile.gpu).
        bound_heap()

    def process(self, uri: str):
        stage, size = "read", None
        try:
            data = read_uri(uri)
            size = len(data)
            stage = "decode"
            if not data:
                raise ValueError("file is empty")
            tensor, (width, height) = eval_tensor_from_bytes(data, self.preprocess, self.keep_jpegs)
        except Exception as e:  # bad data becomes an error row, never a crash
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(ERRORS_TAG, error_record(uri, stage, e, size))
            return
        meta = {"uri": redact(uri), "content_sha256": hashlib.sha256(data).hexdigest(), "size_bytes": size,
                "width": width, "height": height}
        yield meta, tensor
