"""The image contract: how stored bytes become the tensor a checkpoint expects.

The trainer's evaluation and the labeling pipeline both call these functions, so an image labeled in
a bucket is prepared exactly like the validation images that measured the model. Work stays on uint8
(decode, resize, crop); float conversion and normalization happen once per batch.
"""
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from common.jpeg import RGB, decode_jpeg
from schemas.images import INTERPOLATIONS, ORIENTATION_TAG, decode_opened, open_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
@dataclass(frozen=True)
class Preprocess:
    """Eval transform: resize the shorter side to `resize`, center-crop `crop`, normalize."""

    resize: int
    crop: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"preprocess needs 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(INTERPOLATIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(resize=int(d["resize"]), crop=int(d["crop"]), interpolation=d.get("interpolation", "bilinear"),
                   mean=tuple(d.get("mean", IMAGENET_MEAN)), std=tuple(d.get("std", IMAGENET_STD)))

    def resize_plan(self, w: int, h: int) -> tuple[int, int, int, int]:
        """torchvision's Resize + CenterCrop geometry: resized (width, height) and the crop's (left, top)."""
        if w <= h:
            new_w, new_h = self.resize, int(self.resize * h / w)
        else:
            new_w, new_h = int(self.resize * w / h), self.resize
        return new_w, new_h, round((new_w - self.crop) / 2), round((new_h - self.crop) / 2)

    def eval_tensor(self, img: Image.Image) -> torch.Tensor:
        """Resize the shorter side to `resize`, center-crop `crop`: a uint8 CHW tensor of crop x crop.

        Done as one resize of just the source box that becomes the crop: the work (and memory) is
        crop x crop whatever the image's size or aspect ratio.
        """
        w, h = img.size
        new_w, new_h, left, top = self.resize_plan(w, h)
        sx, sy = w / new_w, h / new_h  # source pixels per resized pixel
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        return to_uint8_tensor(img.resize((self.crop, self.crop), INTERPOLATIONS[self.interpolation], box=box))

    def eval_tensor_chw(self, x: torch.Tensor) -> torch.Tensor:
        """The same transform on a uint8 CHW tensor, on its device, antialiased bilinear (bilinear only).

        CPUs have torch's uint8 kernel; CUDA's takes floats only, so there the result is rounded back.
        """
        new_w, new_h, left, top = self.resize_plan(x.shape[2], x.shape[1])
        if x.device.type == "cpu":
            y = F.interpolate(x[None], size=(new_h, new_w), mode="bilinear", antialias=True)[0]
        else:
            y = F.interpolate(x[None].float(), size=(new_h, new_w), mode="bilinear", antialias=True)[0]
            y = y.round_().clamp_(0, 255).to(torch.uint8)
        return y[:, top:top + self.crop, left:left + self.crop].contiguous()

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 NCHW batch -> normalized float batch, on the batch's device."""
        mean = torch.tensor(self.mean, device=batch.device, dtype=dtype).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=batch.device, dtype=dtype).view(1, 3, 1, 1) * 255
        return (batch.to(dtype) - mean) / std


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def eval_tensor_from_bytes(data: bytes, pre: Preprocess, keep_jpeg: bool = False
                           ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Stored bytes -> the eval tensor and the upright stored size, by the fastest path to the same pixels.

    Upright RGB or gray JPEGs too small for draft mode (most photos near the network's size) decode with
    libjpeg-turbo straight into a tensor and resize with torch's uint8 kernel: about 30% less CPU than
    going through a PIL image, and the same pixels to within one level. Every other image, and any JPEG
    that path refuses, takes the PIL path, which also gives the precise error for a broken file.

    With `keep_jpeg`, such a JPEG comes back still encoded (a 1-D uint8 tensor of its bytes), for
    eval_tensors_from_jpegs to decode in a batch on the model's GPU.
    """
    header = open_image(data)
    if _direct_jpeg(header, pre):
        encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        if keep_jpeg:
            return encoded, header.size
        try:
            return pre.eval_tensor_chw(decode_jpeg(encoded, mode=RGB)), header.size
        except RuntimeError:
            pass
    img, size = decode_opened(header, pre.resize)  # the header already opened and checked above
    return pre.eval_tensor(img), size


def _direct_jpeg(header: Image.Image, pre: Preprocess) -> bool:
    """A JPEG to decode straight into a tensor: upright RGB or gray, too small for draft mode to pay,
    resized bilinear (torch's antialiased kernel). libjpeg-turbo gives the PIL path's pixels to within one
    level; nvJPEG's inverse DCT and upsampling differ slightly (`make bench-gpu` measures by how much)."""
    return (header.format == "JPEG" and header.mode in ("RGB", "L") and pre.interpolation == "bilinear"
            and min(header.size) < 2 * pre.resize and header.getexif().get(ORIENTATION_TAG, 1) == 1)


@dataclass(frozen=True)
class CropAt(Preprocess):
    """Preprocess with its crop at `at`, (x, y) fractions of the room the resize leaves beside the crop: (0, 0)
    the top-left corner, (0.5, 0.5) the center, Preprocess's own."""

    at: tuple[float, float] = (0.5, 0.5)

    def resize_plan(self, w: int, h: int) -> tuple[int, int, int, int]:
        new_w, new_h, _, _ = super().resize_plan(w, h)
        return new_w, new_h, round((new_w - self.crop) * self.at[0]), round((new_h - self.crop) * self.at[1])


TEN_CROP_AT = ((0.5, 0.5), (0, 0), (1, 0), (0, 1), (1, 1))  # center, then the corners: TL, TR, BL, BR


class TenCrop(Preprocess):
    """The paper's test-time views (Krizhevsky et al. 2012, sec. 4.1) as a Preprocess whose eval tensors are
    (10, 3, crop, crop): the center crop, the four corners, then their mirror images in the same order.

    Being a Preprocess, it goes wherever one does (eval_tensor_from_bytes, eval_loader, the GPU decode), which
    decode for it just as for the single crop. Each view is resized as the eval tensor is, from its own box, so
    view 0 is exactly Preprocess's eval tensor: cropping one PIL resize of the whole image would differ by a level.
    """

    @classmethod
    def of(cls, pre: Preprocess) -> "TenCrop":
        return cls(**pre.to_dict())

    def eval_tensor(self, img: Image.Image) -> torch.Tensor:
        return self._views(lambda crop: crop.eval_tensor(img))

    def eval_tensor_chw(self, x: torch.Tensor) -> torch.Tensor:
        return self._views(lambda crop: crop.eval_tensor_chw(x))

    def _views(self, crop_of) -> torch.Tensor:
        five = torch.stack([crop_of(CropAt(**self.to_dict(), at=at)) for at in TEN_CROP_AT])
        return torch.cat([five, five.flip(-1)])
