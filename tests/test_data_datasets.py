"""Offline datasets: shapes, deterministic splits, clear errors for missing or malformed paths."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from prunekit.data import (
    CropFlip,
    create_dataset,
    list_datasets,
    random_crop,
    random_hflip,
    split_indices,
)


def test_registry():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "mnist1d", "text"]
    with pytest.raises(ValueError, match="dataset"):
        create_dataset("imagenet")


def test_mnist1d_generated_deterministically():
    a = create_dataset("mnist1d", num_samples=200, val_fraction=0.25, seed=1)
    b = create_dataset("mnist1d", num_samples=200, val_fraction=0.25, seed=1)
    assert a.input_shape == (40,) and a.num_classes == 10
    assert (len(a.train), len(a.val), len(a.test)) == (120, 40, 40)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    c = create_dataset("mnist1d", num_samples=200, val_fraction=0.25, seed=2)
    assert torch.equal(a.test.x, c.test.x)  # test set fixed by data_seed
    assert not torch.equal(a.val.x, c.val.x)  # the split follows seed
    with pytest.raises(TypeError, match="MNIST-1D"):
        create_dataset("mnist1d", num_samples=200, url="http://example.com")


def test_mnist1d_leaves_global_rngs_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    create_dataset("mnist1d", num_samples=50)
    assert np.random.rand() == expected


def test_digits_splits_are_disjoint_and_seeded():
    a = create_dataset("digits", seed=0)
    assert a.input_shape == (1, 8, 8) and a.train.x.shape[1:] == (1, 8, 8)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert abs(float(a.train.x.mean())) < 1e-4  # standardised on the training part
    b = create_dataset("digits", seed=0)
    assert torch.equal(a.test.x, b.test.x)
    parts = split_indices(100, (0.7, 0.1, 0.2), seed=3)
    assert [len(p) for p in parts] == [70, 10, 20]
    assert sorted(torch.cat(parts).tolist()) == list(range(100))


def _write_fake_cifar(root, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": b"fake",
            b"labels": rng.integers(0, 10, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"x.png"] * n,
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def test_cifar_from_local_batches(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    for path in (tmp_path, folder):  # the folder or its parent
        bundle = create_dataset("cifar10", path=str(path), val_fraction=0.25)
        assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10
        assert len(bundle.train) + len(bundle.val) == 20 and len(bundle.test) == 4
        assert bundle.train.x.dtype == torch.float32 and bundle.augment is not None


def test_cifar_missing_path_says_what_layout_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py.*data_batch_1"):
        create_dataset("cifar10", path=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="lacks .*test"):
        create_dataset("cifar100", path=str(tmp_path))
    with pytest.raises(ValueError, match="path"):
        create_dataset("cifar10")


def test_cifar_malformed_batch(tmp_path):
    folder = _write_fake_cifar(tmp_path)
    (folder / "data_batch_3").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(ValueError, match=r"data_batch_3.*\(N, 3072\)"):
        create_dataset("cifar10", path=str(tmp_path))
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot read"):
        create_dataset("cifar10", path=str(tmp_path))


def test_text_corpus_bytes(tmp_path):
    file = tmp_path / "corpus.txt"
    file.write_text("hello world, " * 40)
    bundle = create_dataset(
        "text", path=str(file), block_size=16, val_fraction=0.1, test_fraction=0.1
    )
    assert bundle.task == "lm" and bundle.num_classes == 256
    x, y = bundle.train[0]
    assert x.shape == (16,) and torch.equal(x[1:], y[:-1])
    assert bytes(x.tolist()) == b"hello world, hel"
    with pytest.raises(FileNotFoundError, match="path"):
        create_dataset("text", path=str(tmp_path / "missing.txt"))


def test_crop_and_flip_on_tensors():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    assert torch.equal(random_crop(x, 0), x)
    gen = torch.Generator().manual_seed(0)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape
    # Every crop is a shifted window of the zero-padded image.
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        assert any(
            torch.equal(out[i], padded[i, :, dy : dy + 5, dx : dx + 5])
            for dy in range(5)
            for dx in range(5)
        )
    flipped = random_hflip(x, p=1.0)
    assert torch.equal(flipped, x.flip(-1))
    assert torch.equal(random_hflip(x, p=0.0), x)
    aug = CropFlip(2)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="x:"):
        random_crop(torch.zeros(3, 5, 5), 1)


def test_text_corpus_with_a_local_hf_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    word = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")
    )
    word.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=word, unk_token="[UNK]").save_pretrained(
        tmp_path / "tok"
    )
    (tmp_path / "c.txt").write_text("hello world foo " * 30)
    bundle = create_dataset(
        "text", path=str(tmp_path / "c.txt"), tokenizer=str(tmp_path / "tok"), block_size=4
    )
    assert bundle.num_classes == 3
    assert bundle.train.x[0].tolist() == [1, 2, 0, 1]
    with pytest.raises(ValueError, match="tokenizer: cannot load"):
        create_dataset("text", path=str(tmp_path / "c.txt"), tokenizer=str(tmp_path / "missing"))
