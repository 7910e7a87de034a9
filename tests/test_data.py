"""Data sets, augmentations and data order (fastflow.data)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastflow.data import (
    Augmented,
    DataNotFoundError,
    EpochBatchSampler,
    TensorImageDataset,
    build_datasets,
)
from fastflow.data.embedded import _patches, embedded_patches
from fastflow.data.transforms import pad_crop_flip, random_flip, square_resize


# -- the embedded data set -------------------------------------------------------------------------
def test_embedded_patches_shapes_labels_and_determinism():
    train, valid = embedded_patches(32)
    assert (len(train), len(valid)) == (1483, 64)
    image, label = train[0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label in (0, 1)
    assert set(train.labels.tolist()) == {0, 1} and valid.labels.bincount().tolist() == [32, 32]
    again_train, again_valid = embedded_patches(32)
    assert torch.equal(train.images, again_train.images) and torch.equal(valid.images, again_valid.images)


def test_embedded_training_windows_never_overlap_validation_cells():
    h, w, size = 96, 160, 16
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([ys, xs, np.zeros_like(ys)], -1)  # every pixel knows where it is
    train, valid = _patches(coords, size, 0)
    held_out = {(int(y), int(x)) for cell in valid for y, x in zip(cell[..., 0].ravel(), cell[..., 1].ravel())}
    seen = {(int(y), int(x)) for win in train for y, x in zip(win[..., 0].ravel(), win[..., 1].ravel())}
    assert len(valid) == round((h // size) * (w // size) / 8)
    assert held_out and seen and not held_out & seen


def test_build_datasets_checks_names_and_sizes():
    with pytest.raises(ValueError, match="unknown dataset"):
        build_datasets("mnist", None, 32)
    with pytest.raises(ValueError, match="cifar10 images are 32x32"):
        build_datasets("cifar10", None, 64)


# -- augmentations -------------------------------------------------------------------------------
def test_pad_crop_flip_is_a_seeded_crop_of_the_reflect_padded_image():
    x = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    outs = [pad_crop_flip(x, torch.Generator().manual_seed(s)) for s in range(20)]
    assert all(o.shape == x.shape and o.dtype == torch.uint8 for o in outs)
    assert torch.equal(outs[3], pad_crop_flip(x, torch.Generator().manual_seed(3)))
    assert len({o.numpy().tobytes() for o in outs}) > 5
    padded = torch.nn.functional.pad(x[None].float(), (4, 4, 4, 4), mode="reflect")[0].to(torch.uint8)
    for o in outs:
        windows = [padded[:, t : t + 8, w : w + 8] for t in range(9) for w in range(9)]
        assert any(torch.equal(o, win) or torch.equal(o, win.flip(-1)) for win in windows)


def test_random_flip_flips_about_half_the_time():
    x = torch.arange(12, dtype=torch.uint8).view(1, 3, 4)
    flipped = sum(not torch.equal(random_flip(x, torch.Generator().manual_seed(s)), x) for s in range(200))
    assert 70 < flipped < 130


def test_augmented_depends_only_on_seed_epoch_and_index():
    base = TensorImageDataset(torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8), torch.zeros(10))
    a, b = Augmented(base, pad_crop_flip, seed=1), Augmented(base, pad_crop_flip, seed=1)
    assert torch.equal(a[4][0], b[4][0])
    a.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(10))
    b.set_epoch(1)
    assert all(torch.equal(a[i][0], b[i][0]) for i in reversed(range(10)))


def test_square_resize_center_crops_then_resizes():
    image = Image.new("RGB", (300, 200), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 50, 200))  # a blue band on the left, cropped away
    x = square_resize(image, 64)
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
    assert x[0].min() > 250 and x[2].max() < 5


# -- data order ------------------------------------------------------------------------------------
def test_epoch_order_resumes_mid_epoch_and_splits_batches_over_ranks():
    sampler = EpochBatchSampler(103, 10, seed=7)
    assert sampler.steps_per_epoch == 10
    sampler.set_position(2)
    full = list(sampler)
    assert len(full) == 10 and all(len(b) == 10 for b in full) and len({i for b in full for i in b}) == 100
    sampler.set_position(2, start=6)
    assert list(sampler) == full[6:]
    sampler.set_position(3)
    assert list(sampler) != full
    ranks = [EpochBatchSampler(103, 10, seed=7, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_position(2)
    assert [a + b for a, b in zip(*ranks)] == full
    with pytest.raises(ValueError, match="divisible"):
        EpochBatchSampler(100, 10, seed=0, world_size=3)


# -- data on disk ------------------------------------------------------------------------------------
def test_image_folder_skips_unreadable_files_with_a_warning(tmp_path):
    for i in range(12):
        Image.new("RGB", (40, 30), (i * 20, 0, 0)).save(tmp_path / f"img{i:02d}.png")
    (tmp_path / "img05_broken.jpg").write_bytes(b"this is not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\): .*img05_broken.jpg"):
        train, valid = build_datasets("celeba", tmp_path, 16)
    assert len(train) + len(valid) == 12 and len(valid) == 1
    image, label = train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and label == -1


def test_image_folder_uses_train_and_valid_subfolders(tmp_path):
    for split, count in (("train", 3), ("valid", 2)):
        (tmp_path / split).mkdir()
        for i in range(count):
            Image.new("RGB", (20, 20)).save(tmp_path / split / f"{i}.jpg")
    train, valid = build_datasets("lsun", tmp_path, 8)
    assert (len(train), len(valid)) == (3, 2)


def test_truncated_image_is_replaced_by_the_next_one_with_a_warning(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (0, 100 * i, 0)).save(tmp_path / "train" / f"{i}.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "val" / "v.png")
    broken = tmp_path / "train" / "1.png"
    broken.write_bytes(broken.read_bytes()[:60])  # header intact, pixels cut off
    train, _ = build_datasets("celeba", tmp_path, 8)
    with pytest.warns(UserWarning, match="skipping unreadable image .*1.png"):
        image, _ = train[1]
    assert torch.equal(image, train[2][0])


@pytest.mark.parametrize("dataset", ["cifar10", "imagenet64", "lsun", "celeba"])
def test_missing_data_folder_says_where_and_how(tmp_path, dataset):
    size = {"cifar10": 32, "imagenet64": 64}.get(dataset, 32)
    with pytest.raises(DataNotFoundError) as err:
        build_datasets(dataset, tmp_path / "nowhere", size)
    message = str(err.value)
    assert str((tmp_path / "nowhere").resolve()) in message and "To get it" in message and "--data" in message


def test_empty_data_folder_says_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError, match="no readable training images"):
        build_datasets("lsun", tmp_path, 32)
    with pytest.raises(DataNotFoundError, match="no train_data_batch_"):
        build_datasets("imagenet64", tmp_path, 64)


def test_cifar10_reads_the_python_pickle_layout(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4]}
        (folder / name).write_bytes(pickle.dumps(batches[name]))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    train, valid = build_datasets("cifar10", folder, 32)
    assert (len(train), len(valid)) == (20, 4)
    image, label = valid[2]
    assert image.dtype == torch.uint8 and label == 3
    assert torch.equal(image, torch.from_numpy(batches["test_batch"]["data"][2]).view(3, 32, 32))


def test_cifar10_with_corrupt_files_is_reported(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"junk")
    with pytest.raises(DataNotFoundError, match="incomplete or corrupt CIFAR-10"):
        build_datasets("cifar10", tmp_path, 32)


def test_imagenet64_reads_channel_planar_npz_rows(tmp_path):
    rng = np.random.default_rng(0)
    rows = {}
    for name, n in (("train_data_batch_1", 3), ("train_data_batch_2", 2), ("train_data_batch_10", 1), ("val_data", 2)):
        rows[name] = rng.integers(0, 256, (n, 12288), dtype=np.uint8)
        np.savez(tmp_path / f"{name}.npz", data=rows[name], labels=np.arange(1, n + 1))
    train, valid = build_datasets("imagenet64", tmp_path, 64)
    assert (len(train), len(valid)) == (6, 2)
    image, label = train[3]  # first row of batch 2 (batch 10 sorts after it numerically)
    assert label == 0 and image.shape == (3, 64, 64)
    assert torch.equal(image[1].flatten(), torch.from_numpy(rows["train_data_batch_2"][0][4096:8192]))
    assert torch.equal(train[5][0].flatten(), torch.from_numpy(rows["train_data_batch_10"][0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert valid[1][1] == 1


def test_uncompressed_npz_is_memory_mapped_and_compressed_npz_is_loaded(tmp_path):
    from fastflow.data.datasets import npz_member

    data = np.arange(2 * 12288, dtype=np.uint8).reshape(2, 12288)
    np.savez(tmp_path / "plain.npz", labels=np.array([1, 2]), data=data)
    np.savez_compressed(tmp_path / "packed.npz", data=data)
    mapped = npz_member(tmp_path / "plain.npz", "data")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, data)
    loaded = npz_member(tmp_path / "packed.npz", "data")
    assert not isinstance(loaded, np.memmap) and np.array_equal(loaded, data)
