"""URI -> the image as the checkpoint's preprocess asks: PrepareImage, the element it emits (ImageFile,
with a coder of its own), and the batch JPEG decoder that --gpu-decode runs on the model's device."""
import hashlib
import json
import struct
from dataclasses import dataclass

import apache_beam as beam
import torch
from apache_beam.metrics import Metrics

from beam_pipeline.heap import bound_heap
from beam_pipeline.read import read_uri
from beam_pipeline.rows import Failure
from common.jpeg import RGB, decode_jpeg
from common.redact import redact
from schemas.transform import Preprocess, eval_tensor_from_bytes

# Errors of the GPU itself, not of a file: they must fail the batch rather than become a file's error row.
DEVICE_FAILURES = (torch.OutOfMemoryError, torch.AcceleratorError)


@dataclass(frozen=True, eq=False)  # eq would compare tensors
class ImageFile:
    """One input on its way to the model: what the file is, and its pixels or why it has none.

    `uri` is redacted (the file is read; its signed URL's credential is needed no more). `pixels` is uint8
    CHW, or with --gpu-decode a JPEG still encoded (1-D uint8) that the model handler decodes on its device.
    """

    uri: str
    size_bytes: int | None = None
    content_sha256: str = ""
    width: int = 0
    height: int = 0
    pixels: torch.Tensor | None = None
    failure: Failure | None = None


class ImageFileCoder(beam.coders.Coder):
    """ImageFile as a small JSON header, then the pixels' raw bytes; sized by their byte count.

    Beam samples the size of elements as they pass between transforms by encoding them; with its default
    coder that pickled every decoded image (0.08 ms each, ~2% of the run). Where a runner does move images
    between workers, this encoding is also smaller and faster than a pickle.
    """

    def encode(self, image: ImageFile) -> bytes:
        header = self._header(image)
        pixels = b"" if image.pixels is None else image.pixels.contiguous().numpy().tobytes()
        return struct.pack("<I", len(header)) + header + pixels

    def decode(self, encoded: bytes) -> ImageFile:
        (length,) = struct.unpack_from("<I", encoded)
        *fields, failure, shape = json.loads(encoded[4:4 + length])
        pixels = None if shape is None else torch.frombuffer(bytearray(encoded[4 + length:]),
                                                             dtype=torch.uint8).reshape(shape)
        return ImageFile(*fields, pixels=pixels, failure=failure and Failure(*failure))

    def estimate_size(self, image: ImageFile) -> int:
        return 4 + len(self._header(image)) + (0 if image.pixels is None else image.pixels.nbytes)

    def is_deterministic(self) -> bool:
        return True

    @staticmethod
    def _header(image: ImageFile) -> bytes:
        failure = image.failure and [image.failure.stage, image.failure.error_type, image.failure.message]
        shape = None if image.pixels is None else list(image.pixels.shape)
        return json.dumps([image.uri, image.size_bytes, image.content_sha256, image.width, image.height,
                           failure, shape]).encode()


beam.coders.registry.register_coder(ImageFile, ImageFileCoder)


@beam.typehints.with_output_types(ImageFile)
class PrepareImage(beam.DoFn):
    """Read, decode (JPEG draft mode, EXIF orientation, bomb check), resize and crop on uint8.

    A failure gives an ImageFile with no pixels that names the stage: read, or decode (which covers
    resizing). It goes on to the model handler with the rest, which stamps the live model's version on it.
    With `keep_jpegs` (--gpu-decode), the JPEGs that decode straight into a tensor pass on still encoded.
    """

    def __init__(self, preprocess: Preprocess, keep_jpegs: bool = False):
        self.preprocess, self.keep_jpegs = preprocess, keep_jpegs
        self.failed = Metrics.counter("alexlabel", "errored_before_inference")

    def setup(self):
        # No new malloc arenas from here on. Arenas made before stay, so the label command sets this at its
        # start and the worker image by environment (MALLOC_ARENA_MAX in Dockerfile.gpu).
        bound_heap()

    def process(self, uri: str):
        stage, data = "read", None
        try:
            data = read_uri(uri)
            stage = "decode"
            if not data:
                raise ValueError("file is empty")
            pixels, (width, height) = eval_tensor_from_bytes(data, self.preprocess, self.keep_jpegs)
        except Exception as e:  # bad data becomes an error row, never a crash
            self.failed.inc()
            yield ImageFile(redact(uri), None if data is None else len(data), failure=Failure.of(stage, e))
            return
        yield ImageFile(redact(uri), len(data), hashlib.sha256(data).hexdigest(), width, height, pixels)


def decode_batch(images: list[torch.Tensor], pre: Preprocess, device: torch.device
                 ) -> list[torch.Tensor | Exception]:
    """A batch's pixels as eval tensors: encoded JPEGs (1-D, from --gpu-decode) decoded together on `device`
    (nvJPEG on CUDA), or for each file that no decoder reads, its exception; images prepared on the CPU
    (3-D) stay as they are."""
    jpegs = [image for image in images if image.dim() == 1]
    if not jpegs:
        return images
    decoded = iter(eval_tensors_from_jpegs(jpegs, pre, device))
    return [next(decoded) if image.dim() == 1 else image for image in images]


def eval_tensors_from_jpegs(jpegs: list[torch.Tensor], pre: Preprocess, device: torch.device
                            ) -> list[torch.Tensor | Exception]:
    """JPEGs kept by eval_tensor_from_bytes -> their eval tensors on `device`, decoded together (nvJPEG on
    CUDA), or for each file that no decoder reads, its exception.

    A batch decode fails as a whole, so then each image is tried alone; one the device's decoder refuses
    takes the CPU paths. A failing device (out of memory, a CUDA error) raises: that fails the batch, never
    a good file.
    """
    images = _decode_on(jpegs, device) or [_decode_on(jpeg, device) for jpeg in jpegs]
    results = []
    for jpeg, image in zip(jpegs, images, strict=True):
        if image is not None:
            results.append(pre.eval_tensor_chw(image))
            continue
        try:
            results.append(eval_tensor_from_bytes(jpeg.numpy().tobytes(), pre)[0].to(device))
        except DEVICE_FAILURES:
            raise
        except Exception as e:  # the file is broken (as in PrepareImage): an error row for it
            results.append(e)
    return results


def _decode_on(jpegs: torch.Tensor | list[torch.Tensor], device: torch.device
               ) -> torch.Tensor | list[torch.Tensor] | None:
    """decode_jpeg of one JPEG or a list; None where the decoder refuses the data, but a failing device
    raises."""
    try:
        return decode_jpeg(jpegs, mode=RGB, device=device)
    except DEVICE_FAILURES:
        raise
    except RuntimeError:
        return None
