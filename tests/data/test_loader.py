import numpy as np
import pytest
import torch

from lifevit.data.loader import TensorLoader


def _data(n=40, side=6, c=1):
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 255, (n, side, side, c), dtype=np.uint8)), torch.arange(n) % 4


def test_eval_batches_are_normalised_in_order():
    images, targets = _data()
    loader = TensorLoader(images, targets, 16, mean=(0.5,), std=(0.25,))
    xs, ys = zip(*loader)
    assert [len(y) for y in ys] == [16, 16, 8] and len(loader) == 3
    x = torch.cat(xs)
    expected = (images.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)
    assert torch.equal(torch.cat(ys), targets)


def test_train_order_depends_on_seed_and_epoch_only():
    images, targets = _data()

    def make(seed):
        return TensorLoader(
            images,
            targets,
            8,
            (0.5,),
            (0.5,),
            train=True,
            crop_padding=1,
            hflip=0.5,
            seed=seed,
        )

    a, b = make(0), make(0)
    a.set_epoch(3)
    b.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    b.set_epoch(4)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])
    assert len(a) == 5 and sum(len(y) for _, y in a) == 40


def test_augmentation_is_a_shifted_or_flipped_copy():
    images, targets = _data(n=8)
    loader = TensorLoader(images, targets, 8, (0.0,), (1 / 255,), train=True, crop_padding=1, hflip=0.5, seed=1)
    x, y = next(iter(loader))
    for img, label in zip(x[:, 0], y):
        src = images[label == targets].permute(0, 3, 1, 2)[:, 0].float()  # candidates with this label
        found = False
        padded = torch.nn.functional.pad(src, (1, 1, 1, 1))
        for dy in range(3):
            for dx in range(3):
                crop = padded[:, dy : dy + 6, dx : dx + 6]
                found |= bool(((crop == img).all((1, 2)) | (crop.flip(-1) == img).all((1, 2))).any())
        assert found


def test_processes_split_the_global_batch():
    images, targets = _data(n=48)
    one = TensorLoader(images, targets, 12, (0.5,), (0.5,), train=True, crop_padding=1, hflip=0.5, seed=5)
    ranks = [
        TensorLoader(
            images, targets, 6, (0.5,), (0.5,), train=True, crop_padding=1, hflip=0.5, seed=5, rank=r, world_size=2
        )
        for r in (0, 1)
    ]
    for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks):
        assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))
    # evaluation: every image exactly once over the processes
    ev = [TensorLoader(images, targets, 5, (0.5,), (0.5,), rank=r, world_size=2) for r in (0, 1)]
    seen = torch.cat([y for loader in ev for _, y in loader])
    assert sorted(seen.tolist()) == sorted(targets.tolist()) and sum(e.num_samples() for e in ev) == 48


def test_bad_inputs():
    images, targets = _data()
    with pytest.raises(ValueError, match="mean/std have 3/3 values but the images have 1 channels"):
        TensorLoader(images, targets, 4, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match="expected uint8 images"):
        TensorLoader(images.float(), targets, 4, (0.5,), (0.5,))
