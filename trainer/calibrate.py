"""Softmax temperature fitted on validation logits, and expected calibration error to show the gain."""
import torch

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20  # beyond these, a fit says more about the model than its confidence


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimizing NLL of softmax(logits / T); optimized in log space so T stays positive."""
    logits, labels = logits.clone(), labels.clone()  # may come from inference_mode
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                               bins: int = 15) -> float:
    conf, pred = (logits / temperature).softmax(1).max(1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean() * (conf[inside].mean() - correct[inside].mean()).abs()
    return float(ece)


def calibration_warning(temperature: float, metrics: dict) -> str | None:
    """Why a fitted temperature is not to be trusted, if it is not: an extreme one (a huge T flattens a model
    at chance to uniform, a tiny one sharpens logits that barely differ), or one that made the calibration
    error worse (too few validation images to fit on, or a model still far from trained)."""
    problems = ([f"is extreme (outside {MIN_TEMPERATURE}-{MAX_TEMPERATURE})"]
                if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE else [])
    if metrics["ece_after"] > metrics["ece_before"]:
        problems.append(f"made the expected calibration error worse ({metrics['ece_before']:.3f} -> "
                        f"{metrics['ece_after']:.3f})")
    if not problems:
        return None
    return (f"the fitted temperature {temperature:.3g} {' and '.join(problems)}, at val top-1 "
            f"{metrics['val_top1']:.3f} on {metrics['val_images']} images: its confidences are unreliable; train "
            "until val top-1 is well above chance, or validate on more images")
