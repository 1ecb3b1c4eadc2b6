"""Predictions over a labelled loader, and the accuracy report built from them."""
import torch

from schemas.transform import Preprocess


@torch.inference_mode()
def predict(model: torch.nn.Module, loader, pre: Preprocess, device: torch.device,
            amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (float32, CPU) and labels of a loader, in order; unreadable images are skipped."""
    logits, labels = [], []
    for batch_logits, y in _forward(model, loader, pre, device, amp_dtype):
        logits.append(batch_logits)
        labels.append(y)
    return torch.cat(logits), torch.cat(labels)


@torch.inference_mode()
def predict_ten_crop(model: torch.nn.Module, loader, pre: Preprocess, device: torch.device,
                     amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For a loader of TenCrop views: the center crop's logits (view 0), the log of the softmax averaged over
    the ten views (the paper's prediction, whose argmax and top-k accuracy_report takes) and the labels. One
    forward gives both, so the gain over the single crop costs nothing more."""
    center, ten_crop, labels = [], [], []
    for logits, y in _forward(model, loader, pre, device, amp_dtype):
        center.append(logits[:, 0])
        ten_crop.append(logits.softmax(-1).mean(1).log())
        labels.append(y)
    return torch.cat(center), torch.cat(ten_crop), torch.cat(labels)


def _forward(model: torch.nn.Module, loader, pre: Preprocess, device: torch.device, amp_dtype: torch.dtype | None):
    """(logits, labels) of each batch with readable images, logits float32 on the CPU: (n, classes), or for a
    batch of several views of each image, (n, views, 3, c, c), the views run as images: (n, views, classes)."""
    model.eval()
    for x, y, _ in loader:
        if not len(y):
            continue
        images = pre.normalize(x.to(device, non_blocking=True).flatten(0, -4))
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images.contiguous(memory_format=torch.channels_last)).float().cpu()
        yield logits.view(*x.shape[:-3], -1), y


def accuracy_report(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """Top-1, top-5, per-class accuracy (of the classes that have images) and the confusion matrix (rows = truth,
    columns = prediction)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    pred = top[:, 0]
    n = len(class_names)
    confusion = torch.zeros(n, n, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    per_class = confusion.diag().float() / confusion.sum(1).clamp(min=1)
    present = confusion.sum(1) > 0
    return {
        "images": int(len(labels)),
        "top1": float((pred == labels).float().mean()),
        "top5": float((top == labels[:, None]).any(1).float().mean()),
        "per_class": {name: float(acc) for name, acc, has in zip(class_names, per_class, present, strict=True) if has},
        "confusion": confusion.tolist(),
    }


def accuracy_line(report: dict) -> str:
    """Top-1 and top-5 of a report; for a ten-crop one (it has the center crop's), each beside the center
    crop's, with the gain."""
    if "center_crop" not in report:
        return f"top-1 {report['top1']:.4f}  top-5 {report['top5']:.4f}"
    center = report["center_crop"]
    return "ten-crop " + "  ".join(f"{name} {report[k]:.4f} (center crop {center[k]:.4f}, {report[k] - center[k]:+.4f})"
                                   for name, k in (("top-1", "top1"), ("top-5", "top5")))


def format_confusion(confusion: list[list[int]], class_names: list[str], max_classes: int = 40) -> str:
    """The confusion matrix as aligned text: rows truth, columns predicted.

    Column heads are the class names cut to the column width; where cut names would collide, columns and
    rows are numbered instead. Past max_classes the matrix is too wide to read on a terminal: the JSON
    report has it.
    """
    n = len(class_names)
    if n > max_classes:
        return f"confusion matrix: {n} classes are too many to print; --json writes it"
    width = max(4, len(str(max(map(max, confusion)))), len(str(n - 1)))
    heads = [name[:width] for name in class_names]
    numbered = len(set(heads)) < n
    if numbered:
        heads = [str(i) for i in range(n)]
    rows = [f"{i} {name}" if numbered else name for i, name in enumerate(class_names)]
    label = min(24, max(map(len, rows)))
    lines = ["confusion matrix (rows: truth, columns: predicted)",
             " " * label + "".join(f" {head:>{width}}" for head in heads)]
    lines += [f"{row[:label]:<{label}}" + "".join(f" {c:>{width}}" for c in counts)
              for row, counts in zip(rows, confusion, strict=True)]
    return "\n".join(lines)
