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
