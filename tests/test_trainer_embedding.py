"""The embedding projection: a PCA of the penultimate activations, fitted by `train` on its training set and by
`import-weights --fit-pca` on a folder, stored in the checkpoint (and so in its model version)."""
import glob
import os

import numpy as np
import pytest
import torch
from commands import invoke, one_line_error

from common.errors import UserError
from common.storage import IMAGE_EXTENSIONS, read_bytes
from schemas.checkpoint import EMBEDDING_KEYS, load_checkpoint, split_state, weights_sha256
from schemas.transform import eval_tensor_from_bytes
from trainer.embedding import WHITEN_FLOOR, fit_projection, principal_components
from trainer.models import build_model, features_and_logits, load_model


def signed(columns: np.ndarray) -> np.ndarray:
    """Columns with their largest-magnitude entry made positive, the projection's sign rule."""
    return columns * np.sign(columns[np.abs(columns).argmax(0), np.arange(columns.shape[1])])


def test_the_projection_is_the_pca_of_the_rows_fed_in_batches():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6)) + 5  # correlated and far from the origin
    projection, info = principal_components(torch.from_numpy(x).float().split(37), dim=3)
    _, s, vt = np.linalg.svd(x - x.mean(0), full_matrices=False)
    variances = s**2 / (len(x) - 1)
    assert info == {"dim": 3, "features": 6, "fitted_on": 200,
                    "explained_variance": round(variances[:3].sum() / variances.sum(), 4)}
    assert 0 < info["explained_variance"] < 1
    np.testing.assert_allclose(projection.mean, x.mean(0), rtol=1e-5)
    whitened = variances[:3] + WHITEN_FLOOR * variances[0]
    c = projection.components.double().numpy() * np.sqrt(whitened)  # the directions, unscaled
    assert c.shape == (6, 3) and projection.components.dtype == torch.float32
    np.testing.assert_allclose(c.T @ c, np.eye(3), atol=1e-5)  # orthonormal
    np.testing.assert_allclose(c, signed(vt[:3].T), atol=1e-4)  # in descending variance, signs fixed
    embedded = projection(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(embedded.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(embedded.var(0, ddof=1), variances[:3] / whitened, rtol=1e-4)  # whitened: ~1


def test_the_dimensions_are_capped_by_the_features_and_the_rows():
    x = torch.randn(10, 4)
    assert principal_components([x], dim=16)[1] == {"dim": 4, "features": 4, "fitted_on": 10,
                                                    "explained_variance": 1.0}
    assert principal_components([x[:3]], dim=16)[1]["dim"] == 2  # 3 points span a plane
    with pytest.raises(UserError, match="needs at least 2 readable images, found 1"):
        principal_components([x[:1]], dim=16)


@pytest.mark.parametrize("value, what", [(float("nan"), "not finite"), (0.0, "constant")])
def test_activations_of_a_diverged_or_dead_network_fit_no_projection(value, what):
    x = torch.zeros(10, 4)
    x[3, 1] = value
    with pytest.raises(UserError) as raised:
        principal_components([x], dim=2)
    assert str(raised.value) == (f"the network's penultimate activations are {what} over these images, so no "
                                 "embedding projection fits them; train it until it learns (a diverged or dead "
                                 "network has no useful embeddings)")


def training_images(sample_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(sample_dir, "train", "*", "*.jpg")))


def test_fitting_skips_unreadable_images_and_samples_a_capped_set_by_seed(checkpoint, sample_dir, tmp_path):
    module, manifest, _, _ = load_model(checkpoint)
    images = training_images(sample_dir)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    _, info = fit_projection(module, [*images, str(tmp_path / "broken.jpg")], manifest.preprocess, 8, source="here")
    assert info | {"explained_variance": 0} == {"dim": 8, "features": 128, "fitted_on": len(images),
                                                "explained_variance": 0, "source": "here"}
    fits = [fit_projection(module, images, manifest.preprocess, 8, source="here", max_images=10, seed=seed)
            for seed in (0, 0, 1)]
    assert [info["fitted_on"] for _, info in fits] == [10, 10, 10]
    assert torch.equal(fits[0][0].components, fits[1][0].components) and torch.equal(fits[0][0].mean,
                                                                                      fits[1][0].mean)
    assert not torch.equal(fits[0][0].mean, fits[2][0].mean)  # another seed, other images


def embeddings(checkpoint: str, images: list[str]) -> torch.Tensor:
    """What `label --embeddings` computes: the checkpoint's projection of the penultimate activations."""
    module, manifest, projection, _ = load_model(checkpoint)
    pre = manifest.preprocess
    x = pre.normalize(torch.stack([eval_tensor_from_bytes(read_bytes(uri), pre)[0] for uri in images]))
    with torch.inference_mode():
        return projection(features_and_logits(module, x)[0])


def test_the_trained_checkpoint_carries_a_projection_of_its_training_set(checkpoint, sample_dir):
    _, manifest, projection, _ = load_model(checkpoint)
    assert manifest.embedding == {"dim": 31, "features": 128, "fitted_on": 32, "explained_variance": 1.0,
                                  "source": "training set"}  # 32 images span 31 dimensions
    assert projection.mean.shape == (128,) and projection.components.shape == (128, 31)
    embedded = embeddings(checkpoint, training_images(sample_dir))
    assert embedded.shape == (32, 31)
    # fitted on exactly these activations: centred and whitened, variance 1 / (1 + floor) for the first dimension,
    # falling below 1 only where a dimension's variance is small beside the floor
    assert embedded.mean(0).abs().max() < 1e-3
    variances = embedded.var(0)
    assert abs(variances[0] - 1 / (1 + WHITEN_FLOOR)) < 1e-3 and torch.all(variances <= 1)
    assert torch.all(variances[:-1] >= variances[1:] * (1 - 1e-4))


def train(sample_dir, output, *options):
    return invoke("train", "--data", sample_dir, "--output", output, "--arch", "alexnet_small", "--width", "8",
                  "--dropout", "0", "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--workers", "0",
                  *options)


def test_train_writes_the_projection_into_model_pt_and_its_best_epoch_twin(sample_dir, tmp_path):
    result = train(sample_dir, tmp_path / "pca", "--embedding-dim", "4", "--keep-best", "1")
    assert result.exit_code == 0, result.output
    assert "fitted the embedding projection on 32 training images: 4 of 128 dimensions keep" in result.stdout
    _, manifest = load_checkpoint(str(tmp_path / "pca" / "model.pt"))
    assert manifest.embedding["dim"] == 4 and 0 < manifest.embedding["explained_variance"] < 1
    assert f"model_version {manifest.model_version}" in result.stdout.splitlines()[-1]
    twin = glob.glob(str(tmp_path / "pca" / "best-epoch001-*.pt"))
    assert [load_checkpoint(path)[1].model_version for path in twin] == [manifest.model_version]
    assert embeddings(str(tmp_path / "pca" / "model.pt"), training_images(sample_dir)).shape == (32, 4)
    again = train(sample_dir, tmp_path / "pca", "--embedding-dim", "4", "--keep-best", "1", "--resume")
    assert again.exit_code == 0, again.output  # nothing left to train: model.pt keeps its projection
    assert "fitted" not in again.stdout and f"model_version {manifest.model_version}" in again.stdout

    result = train(sample_dir, tmp_path / "none", "--embedding-dim", "0")
    assert result.exit_code == 0, result.output
    assert "embedding projection" not in result.output
    plain, plain_manifest = load_checkpoint(str(tmp_path / "none" / "model.pt"))
    assert plain_manifest.embedding == {} and load_model(str(tmp_path / "none" / "model.pt"))[2] is None
    # the same training, so the same network: only the projection tells the two versions apart
    weights, projection, _ = split_state(load_checkpoint(str(tmp_path / "pca" / "model.pt"))[0])
    plain = split_state(plain)[0]
    assert plain.keys() == weights.keys() and all(torch.equal(plain[k], weights[k]) for k in plain)
    assert plain_manifest.weights_sha256 != manifest.weights_sha256


def test_a_negative_embedding_dim_is_one_line_before_any_work(tmp_path):
    result = invoke("train", "--data", tmp_path / "none", "--output", tmp_path / "out", "--embedding-dim", "-1")
    assert one_line_error(result) == ("Error: --embedding-dim -1 is negative; give the embedding's dimensions, or 0 "
                                      "for no embedding projection")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> tuple[str, str]:
    """A plain alexnet_small state dict of 5 classes, and its classes file."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    torch.save(build_model("alexnet_small", 5).state_dict(), folder / "small.pth")
    (folder / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    return str(folder / "small.pth"), str(folder / "classes.txt")


def import_weights(small_weights, output, *options):
    path, classes = small_weights
    return invoke("import-weights", path, "--arch", "alexnet_small", "--classes", classes, "--output", output,
                  "--resize", "37", "--crop", "32", *options)


def test_import_weights_fits_the_projection_on_a_folder(small_weights, sample_dir, tmp_path):
    bucket = os.path.join(sample_dir, "bucket")  # 12 images and 4 broken files
    result = import_weights(small_weights, tmp_path / "pca.pt", "--fit-pca", bucket, "--embedding-dim", "6")
    assert result.exit_code == 0, result.output
    module, manifest, projection, int8 = load_model(str(tmp_path / "pca.pt"))
    assert manifest.embedding | {"explained_variance": 0} == {"dim": 6, "features": 1024, "fitted_on": 12,
                                                              "explained_variance": 0, "source": bucket}
    assert projection.components.shape == (1024, 6)
    assert manifest.int8 == {"fitted_on": 12, "source": bucket} and int8 is not None  # for --precision int8 too
    assert (f"embedding projection of 6 dimensions fitted on 12 images "
            f"({manifest.embedding['explained_variance']:.1%} of the variance), int8 ranges on 12, model_version "
            f"{manifest.model_version}") in result.output
    images = sorted(glob.glob(os.path.join(bucket, "img_*.jpg")))
    assert embeddings(str(tmp_path / "pca.pt"), images).shape == (12, 6)

    result = import_weights(small_weights, tmp_path / "plain.pt")  # as before: no projection
    assert result.exit_code == 0, result.output
    plain, plain_manifest = load_checkpoint(str(tmp_path / "plain.pt"))
    assert plain_manifest.embedding == {} and not set(EMBEDDING_KEYS) & plain.keys()
    weights, _, _ = split_state(load_checkpoint(str(tmp_path / "pca.pt"))[0])
    assert weights_sha256(weights) == plain_manifest.weights_sha256 != manifest.weights_sha256


def test_import_weights_on_a_folder_without_images_is_one_line(small_weights, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    result = import_weights(small_weights, tmp_path / "model.pt", "--fit-on", tmp_path / "empty")
    assert one_line_error(result) == (f"Error: --fit-on {tmp_path}/empty holds no images "
                                      f"({', '.join(IMAGE_EXTENSIONS)}); give a folder of images like those you "
                                      "will label")
    assert not (tmp_path / "model.pt").exists()
    assert one_line_error(import_weights(small_weights, tmp_path / "model.pt", "--embedding-dim", "8")) == (
        "Error: --embedding-dim sizes the projection that --fit-on fits; give --fit-on FOLDER too")
