"""Data scores against hand computations: EL2N, GraNd, forgetting, prototypes, random; caching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.data import TensorData
from prunekit.data_pruning import (
    DATA_SCORES,
    FingerprintMismatch,
    ForgettingCallback,
    ForgettingTracker,
    IndexView,
    ScoreContext,
    compute_scores,
    embeddings,
    fingerprint,
    load_scores,
    per_example_grad_norms,
    scores_cached,
)
from prunekit.recipes.spec import TrainSpec
from prunekit.training import Trainer

X = torch.tensor([[1.0, 0.0, 2.0], [0.5, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 2.0, -0.5]])
Y = torch.tensor([0, 1, 1, 0])


def linear(seed: int) -> nn.Linear:
    """A 3 -> 2 linear model with weights fixed by ``seed`` (no RNG involved)."""
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.copy_(torch.arange(6.0).reshape(2, 3) * 0.1 * (seed + 1) - 0.2)
        m.bias.copy_(torch.tensor([0.1, -0.1]) * (seed + 1))
    return m


def hand_el2n(w: list[list[float]], b: list[float], x: list[float], y: int) -> float:
    z = [sum(wi * xi for wi, xi in zip(row, x)) + bi for row, bi in zip(w, b)]
    e = [math.exp(v) for v in z]
    p = [v / sum(e) for v in e]
    return math.sqrt(sum((pc - (1.0 if c == y else 0.0)) ** 2 for c, pc in enumerate(p)))


def ctx(**kw) -> ScoreContext:
    spec = TrainSpec(epochs=1, batch_size=4, lr=0.5, lr_schedule="constant", momentum=0.0,
                     weight_decay=0.0, device="cpu")  # fmt: skip
    defaults = dict(data=TensorData(X, Y), num_classes=2, make_model=linear, train=spec, seed=0)
    return ScoreContext(**{**defaults, **kw})


def test_registry_entries_are_data_scores():
    assert DATA_SCORES.names() == ["el2n", "forgetting", "grand", "prototypes", "random"]
    assert all(DATA_SCORES.get(n).kind == "data" for n in DATA_SCORES)
    with pytest.raises(ValueError, match="score: unknown data score 'nope'"):
        compute_scores("nope", ctx())
    with pytest.raises(ValueError, match="options.bogus: unknown option of score 'el2n'"):
        compute_scores("el2n", ctx(), bogus=1)


def test_el2n_at_initialisation_is_the_mean_error_norm_over_runs():
    got = compute_scores("el2n", ctx(), runs=2, epochs=0)
    for i in range(4):
        runs = [linear(s) for s in (0, 1)]
        want = sum(
            hand_el2n(m.weight.tolist(), m.bias.tolist(), X[i].tolist(), int(Y[i])) for m in runs
        )
        assert got[i].item() == pytest.approx(want / 2, abs=1e-6)


def test_el2n_after_one_epoch_scores_the_trained_model():
    # one full-batch SGD step (lr 0.5, no momentum / decay), computed by hand
    m = linear(0)
    p = torch.softmax(X @ m.weight.detach().T + m.bias.detach(), dim=1)
    err = p - F.one_hot(Y, 2).float()
    w = m.weight.detach() - 0.5 * err.T @ X / 4
    b = m.bias.detach() - 0.5 * err.mean(0)
    got = compute_scores("el2n", ctx(), runs=1, epochs=1)
    want = [hand_el2n(w.tolist(), b.tolist(), X[i].tolist(), int(Y[i])) for i in range(4)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)


def test_grand_matches_the_closed_form_of_a_linear_model():
    # d CE / dW = (p - y) x^T, d CE / db = p - y  ->  norm = ||p - y|| * sqrt(||x||^2 + 1)
    got = compute_scores("grand", ctx(), runs=2, epochs=0, batch_size=3)
    for i in range(4):
        want = 0.0
        for s in (0, 1):
            m = linear(s)
            e = hand_el2n(m.weight.tolist(), m.bias.tolist(), X[i].tolist(), int(Y[i]))
            want += e * math.sqrt(float(X[i] @ X[i]) + 1.0) / 2
        assert got[i].item() == pytest.approx(want, rel=1e-5)


def test_per_example_grad_norms_equal_a_loop_of_autograd_calls():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model(torch.randn(16, 5))  # running statistics
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    got = per_example_grad_norms(model, x, y)
    model.eval()
    for i in range(6):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        assert got[i].item() == pytest.approx(norm.item(), rel=1e-5)


def test_forgetting_counts_a_scripted_sequence():
    t = ForgettingTracker(3)
    t.update(torch.tensor([0, 1, 2]), torch.tensor([True, False, True]))
    t.update(torch.tensor([0, 2]), torch.tensor([False, True]))  # 0 forgotten
    t.update(torch.tensor([0, 1]), torch.tensor([True, False]))
    t.update(torch.tensor([2, 0, 1]), torch.tensor([False, False, False]))  # 0 and 2 forgotten
    assert t.scores().tolist() == [2.0, math.inf, 1.0]  # 1 was never learned
    restored = ForgettingTracker(3)
    restored.load_state_dict(t.state_dict())
    assert restored.scores().tolist() == [2.0, math.inf, 1.0]
    with pytest.raises(ValueError, match="correct: expected one value per index"):
        t.update(torch.tensor([0, 1]), torch.tensor([True]))


class Scripted(nn.Module):
    """Training forward pass k predicts ``script[k, i]`` for example i (its index is x[:, 0])."""

    def __init__(self, script: torch.Tensor) -> None:
        super().__init__()
        self.script = script
        self.calls = 0
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0].long()
        pred = self.script[self.calls % len(self.script), idx] if self.training else idx % 2
        self.calls += int(self.training)
        return F.one_hot(pred, 2).float() * 5 + self.w


def test_forgetting_callback_reads_the_training_predictions_of_each_batch():
    n, steps, bs = 10, 9, 4
    g = torch.Generator().manual_seed(3)
    script = torch.randint(0, 2, (steps, n), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    data = TensorData(torch.arange(n, dtype=torch.float32)[:, None], labels)
    cb = ForgettingCallback(labels)
    trainer = Trainer(Scripted(script), data, iterations=steps, batch_size=bs, seed=1,
                      callbacks=[cb], device="cpu")  # fmt: skip
    trainer.fit()
    want = ForgettingTracker(n)
    for it in range(steps):
        idx = trainer.batch_indices(it)
        assert torch.equal(trainer.batch_at(it)[0][:, 0].long(), idx)
        want.update(idx, script[it, idx] == labels[idx])
    assert torch.equal(cb.tracker.scores(), want.scores())
    assert torch.isfinite(want.scores()).any()


def test_prototypes_is_the_cosine_distance_to_the_nearest_kmeans_centroid():
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20, 4, generator=g) + 4, torch.randn(20, 4, generator=g) - 4])
    data = TensorData(x, torch.zeros(40, dtype=torch.long))
    got = compute_scores("prototypes", ctx(data=data, seed=5), clusters=2, embedding="input")
    emb = F.normalize(x.double(), dim=1)
    km = KMeans(n_clusters=2, n_init=3, random_state=5).fit(emb.numpy())
    c = F.normalize(torch.from_numpy(km.cluster_centers_), dim=1)
    assert torch.allclose(got, (1 - (emb @ c.T).max(1).values).float(), atol=1e-6)
    with pytest.raises(ValueError, match="embedding: expected 'penultimate' or 'input'"):
        compute_scores("prototypes", ctx(data=data), embedding="pixels")


def test_penultimate_embeddings_are_the_input_of_the_last_linear_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 7), nn.Tanh(), nn.Linear(7, 2))
    got = embeddings(model, TensorData(X, Y), batch_size=3)
    assert torch.allclose(got, torch.tanh(model[0](X)).detach())


def test_random_scores_follow_the_seed():
    a = compute_scores("random", ctx(seed=1))
    assert torch.equal(a, compute_scores("random", ctx(seed=1)))
    assert not torch.equal(a, compute_scores("random", ctx(seed=2)))


def test_scores_are_cached_with_the_fingerprint_and_reused(tmp_path, monkeypatch):
    path = tmp_path / "s" / "scores.safetensors"
    first, meta = scores_cached("el2n", ctx(), path, options={"runs": 1, "epochs": 0})
    assert not meta["reused"] and path.is_file()
    calls = []
    import prunekit.data_pruning.cache as cache

    real = cache.compute_scores
    monkeypatch.setattr(cache, "compute_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    again, meta = scores_cached("el2n", ctx(), path, options={"runs": 1, "epochs": 0})
    assert meta["reused"] and not calls and torch.equal(first, again)
    # other options: recomputed
    scores_cached("el2n", ctx(), path, options={"runs": 2, "epochs": 0})
    assert len(calls) == 1
    # other data: recomputed by default, a clear error on request
    other = ctx(data=TensorData(X + 1, Y))
    with pytest.raises(FingerprintMismatch, match="scores.safetensors.*different data set"):
        scores_cached("el2n", other, path, options={"runs": 2, "epochs": 0}, on_mismatch="error")
    scores_cached("el2n", other, path, options={"runs": 2, "epochs": 0})
    assert len(calls) == 2
    assert load_scores(path, fingerprint=fingerprint(other.data))[1]["options"] == {
        "epochs": 0,
        "runs": 2,
    }


class Items(torch.utils.data.Dataset):
    """A plain map-style dataset of (x, y) items."""

    def __init__(self, y):
        self.y = y

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return X[i], self.y[i]


def test_fingerprint_reads_map_style_datasets_and_sees_label_changes():
    assert fingerprint(Items(Y)) == fingerprint(TensorData(X, Y))
    assert fingerprint(Items(1 - Y)) != fingerprint(TensorData(X, Y))


def test_training_on_an_index_view_equals_training_on_a_copied_subset():
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g))
    keep = torch.tensor([1, 4, 5, 9, 10, 22, 31, 40, 41, 49])
    weights = []
    for subset in (IndexView(data, keep), data.subset(keep)):
        torch.manual_seed(0)
        model = nn.Linear(6, 3)
        Trainer(model, subset, iterations=7, batch_size=4, seed=2, device="cpu").fit()
        weights.append(model.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    with pytest.raises(ValueError, match="indices: expected positions in"):
        IndexView(data, torch.tensor([50]))


@pytest.mark.parametrize(
    ("name", "options"),
    [("el2n", {"runs": 1, "epochs": 1}), ("grand", {"runs": 1, "epochs": 1}),
     ("forgetting", {"epochs": 2})],
)  # fmt: skip
def test_scores_of_a_map_style_dataset_equal_those_of_tensors(name, options):
    want = compute_scores(name, ctx(), **options)
    assert torch.equal(compute_scores(name, ctx(data=Items(Y)), **options), want)


def test_interrupted_score_training_resumes_to_the_same_forgetting_counts(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(40, 5, generator=g), torch.randint(0, 3, (40,), generator=g))

    def make(seed):
        torch.manual_seed(seed)
        return nn.Linear(5, 3)

    spec = TrainSpec(epochs=3, batch_size=8, lr=0.2, lr_schedule="cosine", device="cpu")
    base = dict(data=data, num_classes=3, make_model=make, train=spec, seed=4)
    want = compute_scores("forgetting", ScoreContext(**base))
    real_save = Trainer.save

    def save_then_die(self, path=None):
        out = real_save(self, path)
        if self.iteration == 6:
            raise KeyboardInterrupt("killed")
        return out

    monkeypatch.setattr(Trainer, "save", save_then_die)
    resumable = ScoreContext(**base, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=3)
    with pytest.raises(KeyboardInterrupt):
        compute_scores("forgetting", resumable)
    monkeypatch.setattr(Trainer, "save", real_save)
    assert (tmp_path / "ckpt" / "seed4" / "checkpoint.safetensors").is_file()
    steps = []
    real_step = Trainer.train_step
    monkeypatch.setattr(
        Trainer, "train_step", lambda self, x, y: steps.append(1) or real_step(self, x, y)
    )
    assert torch.equal(compute_scores("forgetting", resumable), want)
    assert len(steps) == 15 - 6  # resumed from iteration 6 of 3 epochs x 5 batches
    assert torch.isfinite(want).sum() > 0


class BagOfWords(nn.Module):
    """A tiny text classifier: token embeddings, mean over the sequence, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(tokens).mean(1))


def test_scores_of_a_text_classifier_on_token_ids():
    g = torch.Generator().manual_seed(0)
    tokens, labels = (
        torch.randint(0, 20, (12, 6), generator=g),
        torch.randint(0, 2, (12,), generator=g),
    )

    def make(seed):
        torch.manual_seed(seed)
        return BagOfWords()

    spec = TrainSpec(epochs=2, batch_size=4, lr=0.5, device="cpu")
    c = ScoreContext(data=TensorData(tokens, labels), num_classes=2, make_model=make,
                     model=make(0), train=spec)  # fmt: skip
    got = compute_scores("grand", c, runs=1, epochs=0, batch_size=5)
    model = make(0)
    for i in range(12):
        model.zero_grad()
        F.cross_entropy(model(tokens[i : i + 1]), labels[i : i + 1]).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
        assert got[i].item() == pytest.approx(norm.item(), rel=1e-5)
    for name in ("el2n", "forgetting", "prototypes"):
        assert compute_scores(name, c).shape == (12,)
