"""Every classification data set read back from tiny fixtures written in its real on-disk format."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lifevit.data.classification import ArrayDataset, build_dataset, class_balanced_indices, dataset_info


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_python_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 255, (4, 3072), dtype=np.uint8)
        rows[name] = data
        _pickle(folder / name, {b"data": data, b"labels": [i % 10, 1, 2, 3]})
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    train = build_dataset("cifar10", "train", tmp_path)
    test = build_dataset("cifar-10", "test", tmp_path)
    assert len(train) == 20 and len(test) == 4 and train.classes[3] == "c3"
    assert train.targets[:4].tolist() == [0, 1, 2, 3]
    # row layout: 1024 red, 1024 green, 1024 blue values, row-major 32x32
    img = train.images[0]
    assert img.shape == (32, 32, 3)
    assert img[0, 1, 0] == rows["data_batch_1"][0, 1] and img[0, 0, 2] == rows["data_batch_1"][0, 2048]
    pil, label = train[0]
    assert pil.size == (32, 32) and pil.mode == "RGB" and label == 0


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 6), ("test", 3)):
        _pickle(
            folder / split,
            {b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": list(range(n)), b"coarse_labels": [0] * n},
        )
    _pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    ds = build_dataset("cifar100", "test", tmp_path)
    assert len(ds) == 3 and ds.targets.tolist() == [0, 1, 2] and len(ds.classes) == 100


def test_svhn_mat_maps_label_10_to_digit_0(tmp_path):
    from scipy.io import savemat

    X = np.random.default_rng(0).integers(0, 255, (32, 32, 3, 5), dtype=np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": X, "y": np.array([[10], [1], [2], [9], [10]], dtype=np.uint8)})
    ds = build_dataset("svhn", "test", tmp_path)
    assert ds.targets.tolist() == [0, 1, 2, 9, 0]
    assert np.array_equal(ds.images[3], X[:, :, :, 3])


def test_flowers102_mat_splits(tmp_path):
    from scipy.io import savemat

    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    for i in range(1, 7):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(folder / "jpg" / f"image_{i:05d}.jpg")
    savemat(folder / "imagelabels.mat", {"labels": np.array([[1, 2, 3, 102, 5, 6]])})
    savemat(
        folder / "setid.mat", {"trnid": np.array([[1, 2]]), "valid": np.array([[3]]), "tstid": np.array([[4, 5, 6]])}
    )
    test = build_dataset("flowers102", "test", tmp_path)
    assert test.targets.tolist() == [101, 4, 5] and len(test.classes) == 102
    img, label = test[0]
    assert img.size == (40, 30) and label == 101


def _tiny_imagenet(root):
    folder = root / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    for w in wnids:
        (folder / "train" / w / "images").mkdir(parents=True)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
        for k in range(2):
            Image.new("RGB", (64, 64)).save(folder / "train" / w / "images" / f"{w}_{k}.JPEG")
    lines = []
    for k, w in enumerate([wnids[2], wnids[0], wnids[2]]):  # one flat folder; labels only in the annotations file
        Image.new("RGB", (64, 64)).save(folder / "val" / "images" / f"val_{k}.JPEG")
        lines.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_imagenet_official_layout_without_refoldering(tmp_path):
    _tiny_imagenet(tmp_path)
    train = build_dataset("tiny_imagenet", "train", tmp_path)
    val = build_dataset("tiny_imagenet", "test", tmp_path)  # test has no labels: the val split is evaluated
    assert len(train) == 6 and train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert val.targets.tolist() == [2, 0, 2]
    assert val.classes[:2] == ["goldfish", "European fire salamander"] and val.classes[2] == "n01641577"
    img, _ = val[1]
    assert img.size == (64, 64)
    assert dataset_info("tiny_imagenet").img_size == 64


@pytest.mark.parametrize("name,sub", [("imagefolder", ""), ("imagenet100", "imagenet100")])
def test_image_folder_trees(tmp_path, name, sub):
    base = tmp_path / sub if sub else tmp_path
    for split, classes in (("train", ["cat", "dog", "emu"]), ("val", ["cat", "emu"])):
        for c in classes:
            (base / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(base / split / c / "a.png")
    val = build_dataset(name, "val", tmp_path)
    assert val.classes == ["cat", "dog", "emu"] and val.targets.tolist() == [0, 2]  # indices of the train classes


def test_missing_dataset_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.delenv("LIFEVIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        build_dataset("cifar10", "train", tmp_path / "nowhere")
    msg = str(err.value)
    assert "cifar10 not found" in msg and str(tmp_path / "nowhere") in msg and "cifar-10-python.tar.gz" in msg
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; expected one of fashion_mnist"):
        build_dataset("mnist")


def test_class_balanced_indices():
    targets = np.repeat(np.arange(4), [50, 30, 20, 10])
    idx = class_balanced_indices(targets, 22, seed=3)
    counts = np.bincount(targets[idx], minlength=4)
    assert counts.sum() == 22 and counts.max() - counts.min() <= 1
    assert len(set(idx.tolist())) == 22
    assert np.array_equal(idx, class_balanced_indices(targets, 22, seed=3))
    assert not np.array_equal(idx, class_balanced_indices(targets, 22, seed=4))
    with pytest.raises(ValueError, match="class 2 has 20 images but a balanced subset of 100 needs 25"):
        class_balanced_indices(targets, 100)
    with pytest.raises(ValueError, match=r"must be in 1\.\.110"):
        class_balanced_indices(targets, 0)


def test_array_dataset_subset_and_validation():
    ds = ArrayDataset(np.zeros((5, 4, 4), np.uint8), np.arange(5), ["a"] * 5)
    assert ds.images.shape == (5, 4, 4, 1) and ds.subset([1, 3]).targets.tolist() == [1, 3]
    with pytest.raises(ValueError, match="expected uint8 images"):
        ArrayDataset(np.zeros((5, 4, 4), np.float32), np.arange(5), [])
    assert isinstance(ds.targets, torch.Tensor)


# ------------------------------------------------------------------------------------------------ bad input
def _cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        _pickle(folder / name, {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]})
    _pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return folder


def test_truncated_or_foreign_cifar_pickle_names_the_file(tmp_path):
    folder = _cifar10(tmp_path)
    victim = folder / "data_batch_3"
    victim.write_bytes(victim.read_bytes()[:100])
    with pytest.raises(ValueError) as err:
        build_dataset("cifar10", "train", tmp_path)
    assert str(victim) in str(err.value) and "truncated" in str(err.value)
    assert len(build_dataset("cifar10", "test", tmp_path)) == 4  # the other split is unharmed
    _pickle(folder / "test_batch", {b"data": np.zeros((4, 3072), np.uint8)})  # no labels
    with pytest.raises(ValueError, match=r"test_batch: expected a CIFAR pickle .* missing \['labels'\]"):
        build_dataset("cifar10", "test", tmp_path)
    _pickle(folder / "test_batch", {b"data": np.zeros((4, 3000), np.uint8), b"labels": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match=r"test_batch: expected data \(N, 3072\)"):
        build_dataset("cifar10", "test", tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3 is missing"):
        build_dataset("cifar10", "train", tmp_path)


def test_explicit_data_root_is_the_only_place_looked_in(tmp_path, monkeypatch):
    fallback = tmp_path / "home_data"
    _cifar10(fallback)
    monkeypatch.setenv("LIFEVIT_DATA", str(fallback))
    assert len(build_dataset("cifar10", "test")) == 4  # no root: the usual search finds it
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found: the data root .*nowhere does not exist"):
        build_dataset("cifar10", "test", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"cifar10 not found: looked for .*empty"):
        build_dataset("cifar10", "test", tmp_path / "empty")


def _fashion_mnist(folder, n=6):
    from lifevit.data.fashion_mnist import write_fashion_mnist

    images = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    return write_fashion_mnist(folder, (images, labels), (images[:3], labels[:3]))


def test_fashion_mnist_truncated_gz_names_the_file(tmp_path):
    folder = _fashion_mnist(tmp_path / "fm")
    victim = folder / "train-images-idx3-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:40])
    with pytest.raises(ValueError) as err:
        build_dataset("fashion_mnist", "train", folder)
    assert str(victim) in str(err.value) and "truncated" in str(err.value) and "gzip" in str(err.value)
    victim.write_bytes(b"plain bytes, not gzip")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz is truncated or not a valid gzip file"):
        build_dataset("fashion_mnist", "train", folder)
    import gzip

    with gzip.open(victim, "wb") as f:  # a valid gzip stream, but the IDX data is cut short
        f.write(bytes([0, 0, 8, 3]) + (6).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big") + b"x")
    with pytest.raises(ValueError, match=r"header says shape \(6, 28, 28\) \(4704 bytes\) but the file has 1"):
        build_dataset("fashion_mnist", "train", folder)


def test_fashion_mnist_explicit_root_never_falls_back(tmp_path, monkeypatch):
    from lifevit.data import fashion_mnist as fm

    system = _fashion_mnist(tmp_path / "system", n=8)
    monkeypatch.setattr(fm, "DEBIAN_ROOT", system)
    monkeypatch.delenv("LIFEVIT_FASHION_MNIST", raising=False)
    assert len(build_dataset("fashion_mnist", "train")) == 8  # no root given: the system copy
    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST root .*nowhere does not exist"):
        build_dataset("fashion_mnist", "train", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Fashion-MNIST not found: none of .*empty.* holds"):
        build_dataset("fashion_mnist", "train", tmp_path / "empty")
    mine = _fashion_mnist(tmp_path / "mine" / "FashionMNIST" / "raw", n=5)  # torchvision's layout under the root
    assert len(build_dataset("fashion_mnist", "train", tmp_path / "mine")) == 5
    monkeypatch.setenv("LIFEVIT_FASHION_MNIST", str(mine))
    assert len(build_dataset("fashion_mnist", "train")) == 5
    monkeypatch.setenv("LIFEVIT_FASHION_MNIST", str(tmp_path / "gone"))
    with pytest.raises(FileNotFoundError, match="gone does not exist"):
        build_dataset("fashion_mnist", "train")


def test_image_files_are_read_with_the_shared_reader(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "train" / c).mkdir(parents=True)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "train" / "cat" / "ok.png")
    (tmp_path / "train" / "cat" / "zero.png").write_bytes(b"")
    (tmp_path / "train" / "dog" / "text.jpg").write_text("not an image")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "train" / "dog" / "deep.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 200  # fully transparent: the hidden colour must not show
    Image.fromarray(rgba, "RGBA").save(tmp_path / "train" / "dog" / "see_through.png")
    ds = build_dataset("imagefolder", "train", tmp_path)
    by_name = {p.name: i for i, (p, _) in enumerate(ds.samples)}
    assert np.asarray(ds[by_name["ok.png"]][0])[0, 0].tolist() == [9, 9, 9]
    for name, what in (("zero.png", "is empty"), ("text.jpg", "is not an image file")):
        with pytest.raises(ValueError, match=what) as err:
            ds[by_name[name]]
        assert name in str(err.value)
    assert np.asarray(ds[by_name["deep.png"]][0])[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(ds[by_name["see_through.png"]][0])[0, 0].tolist() == [0, 0, 0]


def test_truncated_mat_file_names_the_file(tmp_path):
    from scipy.io import savemat

    X = np.zeros((32, 32, 3, 5), np.uint8)
    savemat(tmp_path / "test_32x32.mat", {"X": X, "y": np.ones((5, 1), np.uint8)})
    path = tmp_path / "test_32x32.mat"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError) as err:
        build_dataset("svhn", "test", tmp_path)
    assert str(path) in str(err.value) and "truncated" in str(err.value)
    savemat(path, {"images": X})
    with pytest.raises(ValueError, match=r"test_32x32\.mat: expected a variable 'X'"):
        build_dataset("svhn", "test", tmp_path)
