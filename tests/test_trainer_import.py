"""`alexlabel import-weights`: a torchvision-layout state dict becomes a checkpoint the pipeline can load."""
import hashlib

import pytest
import torch
import torchvision
from click.testing import CliRunner
from commands import one_line_error

from alexlabel.cli import main
from schemas.checkpoint import load_checkpoint
from schemas.transform import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from trainer.models import load_model

CLASSES = ["cat", "dog", "fox", "owl", "yak"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[str, dict]:
    """torchvision's AlexNet with 5 outputs, saved as a plain state dict like its published ImageNet file."""
    torch.manual_seed(0)
    state_dict = torchvision.models.alexnet(num_classes=len(CLASSES)).state_dict()
    path = str(tmp_path_factory.mktemp("weights") / "alexnet-5.pth")
    torch.save(state_dict, path)
    return path, state_dict


def import_weights(*args):
    return CliRunner().invoke(main, ["import-weights", *args])


def test_import_wraps_the_weights_with_imagenet_preprocessing(weights, tmp_path):
    path, state_dict = weights
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = tmp_path / "model" / "model.pt"
    result = import_weights(path, "--arch", "alexnet", "--classes", str(tmp_path / "classes.txt"), "--output", str(out))
    assert result.exit_code == 0, result.output
    loaded, manifest = load_checkpoint(str(out))
    assert manifest.arch == "alexnet" and manifest.class_names == CLASSES and manifest.temperature == 1.0
    assert manifest.preprocess == Preprocess(resize=256, crop=224, interpolation="bilinear", mean=IMAGENET_MEAN,
                                             std=IMAGENET_STD)
    assert manifest.provenance["imported_from"] == path
    with open(path, "rb") as f:
        assert manifest.provenance["source_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert manifest.provenance["torchvision"] == torchvision.__version__
    assert loaded.keys() == state_dict.keys()
    assert all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)
    assert manifest.model_version in result.output

    module, _, _, _ = load_model(str(out))  # what the pipeline does with it
    reference = torchvision.models.alexnet(num_classes=len(CLASSES)).eval()
    reference.load_state_dict(state_dict)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), reference(x))


def test_class_count_that_does_not_match_the_final_layer_is_one_line(weights, tmp_path):
    path, _ = weights
    (tmp_path / "classes.txt").write_text("cat\ndog\nfox\n")
    out = tmp_path / "model.pt"
    result = import_weights(path, "--classes", str(tmp_path / "classes.txt"), "--output", str(out))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path}/classes.txt lists 3 classes but the weights' final layer (classifier.6.weight) has 5 "
        "outputs; list exactly one class name per output"]
    assert not out.exists()


def test_a_pickled_module_is_refused_without_running_it(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a whole module, not a state dict
    (tmp_path / "classes.txt").write_text("a\nb\n")
    result = import_weights(str(tmp_path / "module.pth"), "--classes", str(tmp_path / "classes.txt"),
                            "--output", str(tmp_path / "model.pt"))
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "holds objects other than tensors and was refused" in result.output


def test_an_output_that_is_a_directory_is_refused_before_the_work(weights, tmp_path):
    path, _ = weights
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    out = tmp_path / "models"
    out.mkdir()
    result = import_weights(path, "--classes", str(tmp_path / "classes.txt"), "--output", str(out))
    assert one_line_error(result) == f"Error: --output {out} is a directory; give the path of the file to write"
    assert list(out.iterdir()) == []  # no hidden temp file either
