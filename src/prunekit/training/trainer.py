"""The training loop: masks enforced every step, per-iteration LR, exact checkpoint + resume, DDP.

>>> import torch
>>> from prunekit.data import TensorData
>>> from prunekit.training import Trainer
>>> from prunekit.training.lr import CosineLR
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<...>
>>> data = TensorData(torch.randn(64, 8), torch.randint(0, 3, (64,)))
>>> model = torch.nn.Linear(8, 3)
>>> result = Trainer(model, data, lr_schedule=CosineLR(0.1, 20), batch_size=16).fit()
>>> result.iterations
20
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.core.device import resolve_device
from prunekit.core.errors import FileFormatError
from prunekit.core.masks import MaskEnforcer, MaskSet
from prunekit.data.base import TensorData
from prunekit.training.checkpoint import checkpoint_file, load_checkpoint, save_checkpoint
from prunekit.training.distributed import (
    all_reduce_sum,
    broadcast_masks,
    dist_info,
    is_distributed,
)
from prunekit.training.lr import LRSchedule

TASKS = ("classification", "lm")


class Callback:
    """Hooks into :meth:`Trainer.fit`; override what you need. Set ``trainer.should_stop`` to stop."""

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_before_step(self, trainer: Trainer, loss: Tensor) -> bool | None:
        """After ``backward()``, before gradient clipping and ``optimizer.step()``.

        Return False to skip this optimizer step (the iteration still counts: the LR schedule
        and data order go on). Gradients may be scaled by the AMP ``GradScaler``.
        """
        return None

    def on_step_end(self, trainer: Trainer, loss: Tensor) -> None:
        """After each optimizer step; ``trainer.iteration`` counts the steps done."""

    def state_dict(self) -> dict[str, Any] | None:
        """JSON-able state stored in the Trainer's checkpoints (None: nothing to store)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; called by :meth:`Trainer.load`, before
        ``on_fit_start``, after the model, optimizer and masks are restored."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns: iterations run and per-epoch metrics."""

    iterations: int
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)


def make_optimizer(
    model: nn.Module,
    name: str = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over all trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    key = name.lower()
    if key == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer: expected 'sgd', 'adam' or 'adamw', got {name!r}")


class MapData:
    """Adapts a map-style ``torch.utils.data.Dataset`` of ``(x, y)`` items to batch indexing."""

    def __init__(self, dataset: torch.utils.data.Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: Tensor | slice) -> tuple[Tensor, Tensor]:
        indices = range(len(self))[index] if isinstance(index, slice) else index.tolist()
        items = [self.dataset[int(i)] for i in indices]
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.stack([torch.as_tensor(item[1]) for item in items])
        return x, y


def _as_data(data: Any, argument: str) -> TensorData | MapData:
    if isinstance(data, (TensorData, MapData)):
        return data
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        return TensorData(*data.tensors)
    if (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, Tensor) for t in data)
    ):
        return TensorData(data[0], data[1])
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return MapData(data)
    raise TypeError(
        f"{argument}: expected TensorData, a map-style Dataset of (x, y) items or a tuple (x, y) "
        f"of tensors, got {type(data).__name__}"
    )


class Trainer:
    """Train ``model`` on ``train_data`` with optional masks kept enforced at every step.

    Args:
        model: any ``nn.Module``.
        train_data: :class:`~prunekit.data.TensorData`, ``(x, y)`` tensors, or any map-style
            ``Dataset`` whose items are ``(x, y)`` (batches are stacked from single items).
        optimizer: an optimizer over ``model``'s parameters (default SGD, momentum 0.9, wd 5e-4).
        lr_schedule: LR per iteration (sets every param group's ``lr``, times its optional
            ``lr_scale``). ``None`` keeps the optimizer's LR.
        iterations / epochs: length of the run (default: the schedule's length).
        batch_size: examples per step (per process under DDP).
        val_data: evaluated at the end of each epoch when given.
        masks: a :class:`~prunekit.core.masks.MaskSet` enforced after every optimizer step.
        loss_fn: ``f(outputs, targets) -> loss`` (default cross-entropy; token-level for ``lm``).
        task: ``"classification"`` or ``"lm"`` (adds perplexity to the metrics).
        augment: ``f(x, generator) -> x`` applied to training batches.
        device: ``None`` or ``"auto"``: CUDA when available, else CPU. The model moves there;
            data stay where they are and each batch is moved when it is used.
        amp: mixed precision; ``"auto"`` turns it on for CUDA (bfloat16 when supported).
        seed: seeds the data order, augmentation and the global torch RNG at the start.
        callbacks: :class:`Callback` objects.
        progress: show a tqdm progress bar.
        checkpoint_dir: where to save checkpoints; :meth:`fit` resumes from one found there.
        checkpoint_every: save every this many iterations (and at the end).
        grad_clip: clip the gradient norm to this value.
        distributed: wrap in DistributedDataParallel when a process group is initialised
            (default: ``True`` whenever one is).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        lr_schedule: LRSchedule | None = None,
        iterations: int | None = None,
        epochs: float | None = None,
        batch_size: int = 128,
        val_data: Any = None,
        masks: MaskSet | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        task: str = "classification",
        augment: Callable[..., Tensor] | None = None,
        device: torch.device | str | None = None,
        amp: bool | str = "auto",
        seed: int = 0,
        callbacks: Sequence[Callback] = (),
        progress: bool = False,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        grad_clip: float | None = None,
        eval_batch_size: int = 512,
        drop_last: bool = False,
        distributed: bool | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if task not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.train_data = _as_data(train_data, "train_data")
        if len(self.train_data) == 0:
            raise ValueError("train_data: no examples")
        self.val_data = _as_data(val_data, "val_data") if val_data is not None else None
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.task = task
        self.loss_fn = loss_fn
        self.augment = augment
        self.seed = int(seed)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.grad_clip = grad_clip
        self.callbacks = list(callbacks)
        self.progress = progress
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.optimizer = optimizer if optimizer is not None else make_optimizer(self.model)
        self.lr_schedule = lr_schedule

        self.rank, self.world = dist_info()
        self.distributed = is_distributed() if distributed is None else bool(distributed)
        if self.distributed and not is_distributed():
            raise ValueError("distributed: no torch.distributed process group is initialised")
        if not self.distributed:
            self.rank, self.world = 0, 1

        # Every rank sees the same number of examples so all take the same number of steps.
        self._per_rank = len(self.train_data) // self.world
        if self._per_rank == 0:
            raise ValueError(
                f"train_data: {len(self.train_data)} examples for {self.world} processes"
            )
        per_epoch = self._per_rank / batch_size
        self.iters_per_epoch = max(1, math.floor(per_epoch) if drop_last else math.ceil(per_epoch))
        self.total = self._resolve_length(iterations, epochs, lr_schedule)

        amp_on = self.device.type == "cuda" if amp == "auto" else bool(amp)
        if amp_on and self.device.type != "cuda":
            raise ValueError("amp: mixed precision needs a CUDA device")
        self.amp_dtype = (
            (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
            if amp_on
            else None
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self.net: nn.Module = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

        self.masks: MaskSet | None = None
        self._enforcer: MaskEnforcer | None = None
        if masks is not None:
            self.set_masks(masks)

        self.iteration = 0
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self._checked = False
        self._perm_cache: tuple[int, Tensor] | None = None
        self._epoch_loss: tuple[Any, int] = (0.0, 0)  # running train loss of the current epoch

    # ------------------------------------------------------------------ set-up helpers
    def _resolve_length(
        self, iterations: int | None, epochs: float | None, schedule: LRSchedule | None
    ) -> int:
        if iterations is not None and epochs is not None:
            raise ValueError("iterations, epochs: give one of them, not both")
        if iterations is not None:
            if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
                raise ValueError(f"iterations: expected a non-negative integer, got {iterations!r}")
            total = iterations
        elif epochs is not None:
            if not isinstance(epochs, (int, float)) or epochs < 0:
                raise ValueError(f"epochs: expected a non-negative number, got {epochs!r}")
            total = int(round(epochs * self.iters_per_epoch))
        elif schedule is not None:
            total = schedule.total
        else:
            raise ValueError("iterations: give iterations, epochs or an lr_schedule")
        if schedule is not None and schedule.total < total:
            raise ValueError(
                f"lr_schedule: covers {schedule.total} iterations but the run has {total}"
            )
        return total

    def set_masks(self, masks: MaskSet | None) -> None:
        """Replace the enforced mask set (e.g. after a pruning step); ``None`` stops enforcing."""
        if self._enforcer is not None:
            self._enforcer.remove()
            self._enforcer = None
        if masks is None:
            self.masks = None
            return
        if not isinstance(masks, MaskSet):
            raise TypeError(f"masks: expected a MaskSet, got {type(masks).__name__}")
        masks = masks.to(self.device)
        if self.distributed:
            broadcast_masks(masks)  # rank 0's masks are the truth on every rank
        self.masks = masks
        self._enforcer = masks.attach(self.optimizer, self.model)

    # ------------------------------------------------------------------ data
    def _epoch_order(self, epoch: int) -> Tensor:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(len(self.train_data), generator=gen, device="cpu")  # host data
            local = perm[self.rank : self.world * self._per_rank : self.world]
            self._perm_cache = (epoch, local)
        return self._perm_cache[1]

    def batch_indices(self, iteration: int) -> Tensor:
        """Indices into ``train_data`` of the batch of ``iteration`` (callbacks that keep
        per-example statistics use them; a pure function of seed, iteration and rank)."""
        epoch, index = divmod(iteration, self.iters_per_epoch)
        order = self._epoch_order(epoch)
        return order[index * self.batch_size : (index + 1) * self.batch_size]

    def batch_at(self, iteration: int) -> tuple[Tensor, Tensor]:
        """The training batch of ``iteration`` (a pure function of seed, iteration and rank)."""
        x, y = self.train_data[self.batch_indices(iteration)]
        if self.augment is not None:
            gen = torch.Generator().manual_seed(
                (self.seed * 7_919 + iteration * 104_729 + self.rank) % (2**63)
            )
            x = self.augment(x, gen)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def compute_loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(outputs, targets)
        if self.task == "lm":
            return F.cross_entropy(
                outputs.reshape(-1, outputs.shape[-1]).float(), targets.reshape(-1)
            )
        return F.cross_entropy(outputs.float(), targets)

    def _check_shapes(self, x: Tensor, y: Tensor) -> None:
        """Run one forward pass and turn a model/data mismatch into a clear error."""
        # Eval mode: the check must not touch BatchNorm statistics or consume dropout randomness.
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self._autocast():
            try:
                out = self.model(x[:2])
            except RuntimeError as err:
                raise ValueError(
                    f"model/data shape mismatch: the model cannot take inputs of shape "
                    f"{tuple(x.shape[1:])} (per example): {err}"
                ) from err
            finally:
                self.model.train(was_training)
        if self.loss_fn is not None:
            return
        y2 = y[:2]
        if self.task == "lm":
            ok = out.dim() == 3 and out.shape[:2] == y2.shape
        else:
            ok = out.dim() == 2 and out.shape[0] == y2.shape[0] and y2.dim() == 1
        if not ok:
            raise ValueError(
                f"model/data shape mismatch: task {self.task!r} expects outputs of shape "
                f"{'(batch, length, vocab)' if self.task == 'lm' else '(batch, classes)'} for "
                f"targets of shape {tuple(y2.shape)}, the model gave {tuple(out.shape)}"
            )
        top = int(y.max()) if y.numel() else -1
        if top >= out.shape[-1]:
            raise ValueError(
                f"model/data shape mismatch: the data has label {top} but the model has only "
                f"{out.shape[-1]} outputs"
            )

    def train_step(self, x: Tensor, y: Tensor) -> Tensor:
        """One optimizer step on a batch; masks are re-applied by the step hook. Returns the loss."""
        if not self._checked:
            self._check_shapes(x, y)
            self._checked = True
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.compute_loss(self.net(x), y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if not self._before_step(loss):
                return loss.detach()  # skipped before unscale_: the scaler's state is untouched
            if self.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if not self._before_step(loss):
                return loss.detach()
            if self.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
        return loss.detach()

    def _before_step(self, loss: Tensor) -> bool:
        # Every callback sees every step (some count them), even when an earlier one vetoes it.
        proceed = True
        for cb in self.callbacks:
            hook = getattr(cb, "on_before_step", None)
            if hook is not None and hook(self, loss.detach()) is False:
                proceed = False
        return proceed

    def _set_lr(self, iteration: int) -> None:
        if self.lr_schedule is None:
            return
        lr = self.lr_schedule.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = True) -> FitResult:
        """Train until ``iterations`` steps are done; resume from ``checkpoint_dir`` if one is there."""
        from tqdm.auto import tqdm

        if self.iteration == 0:
            resumed = resume and self.checkpoint_dir is not None and self.load()
            if not resumed:
                torch.manual_seed(self.seed)
        self.model.train()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        bar = tqdm(
            total=self.total,
            initial=self.iteration,
            disable=not self.progress or self.rank != 0,
            desc="train",
            dynamic_ncols=True,
        )
        loss_sum = torch.tensor(self._epoch_loss[0], device=self.device)
        loss_count = self._epoch_loss[1]
        try:
            while self.iteration < self.total and not self.should_stop:
                x, y = self.batch_at(self.iteration)
                self._set_lr(self.iteration)
                loss = self.train_step(x, y)
                self.iteration += 1
                loss_sum += loss
                loss_count += 1
                self._epoch_loss = (loss_sum, loss_count)
                bar.update(1)
                for cb in self.callbacks:
                    cb.on_step_end(self, loss)
                if self.iteration % self.iters_per_epoch == 0 or self.iteration == self.total:
                    self._end_epoch(loss_sum, loss_count, bar)
                    loss_sum = torch.zeros((), device=self.device)
                    loss_count = 0
                    self._epoch_loss = (0.0, 0)
                if (
                    self.checkpoint_dir is not None
                    and self.checkpoint_every
                    and self.iteration % self.checkpoint_every == 0
                ):
                    self.save()
        finally:
            bar.close()
        if self.checkpoint_dir is not None and self.iteration == self.total:
            self.save()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        final = self.history[-1] if self.history else {}
        return FitResult(self.iteration, list(self.history), dict(final))

    def _end_epoch(self, loss_sum: Tensor, count: int, bar: Any) -> None:
        epoch = (self.iteration - 1) // self.iters_per_epoch
        train_loss = float(loss_sum) / max(count, 1)
        if self.distributed:
            train_loss = (
                float(all_reduce_sum(torch.tensor([train_loss], device=self.device))) / self.world
            )
        metrics = {
            "epoch": float(epoch),
            "iteration": float(self.iteration),
            "train_loss": train_loss,
        }
        if self.lr_schedule is not None:
            metrics["lr"] = self.lr_schedule.lr_at(self.iteration - 1)
        if self.val_data is not None and len(self.val_data):
            metrics.update({f"val_{k}": v for k, v in self.evaluate(self.val_data).items()})
        self.history.append(metrics)
        bar.set_postfix(
            {k: round(v, 4) for k, v in metrics.items() if k in ("train_loss", "val_top1")}
        )
        for cb in self.callbacks:
            cb.on_epoch_end(self, epoch, metrics)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, data: Any = None, batch_size: int | None = None) -> dict[str, float]:
        """Loss, top-1 and top-5 accuracy (and perplexity for ``lm``) on ``data`` (default: val)."""
        data = _as_data(data, "data") if data is not None else self.val_data
        if data is None:
            raise ValueError("data: nothing to evaluate (no data given and no val_data)")
        return evaluate(
            self.model,
            data,
            task=self.task,
            batch_size=batch_size or self.eval_batch_size,
            device=self.device,
            amp_dtype=self.amp_dtype,
            loss_fn=self.loss_fn,
            distributed=self.distributed,
        )

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Path | None = None) -> Path | None:
        """Write a checkpoint (rank 0 only under DDP); returns its path."""
        target = Path(path) if path is not None else self._checkpoint_path()
        if self.rank == 0:
            save_checkpoint(
                target,
                self.model,
                self.optimizer,
                masks=self.masks,
                scaler=self.scaler,
                iteration=self.iteration,
                extra={
                    "history": self.history,
                    "seed": self.seed,
                    "total": self.total,
                    "epoch_loss": [float(self._epoch_loss[0]), int(self._epoch_loss[1])],
                    "callbacks": self._callback_states(),
                },
            )
        if self.distributed:
            torch.distributed.barrier()
        return target

    def load(self, path: str | Path | None = None) -> bool:
        """Restore a checkpoint (model, optimizer, masks, RNG, iteration); False if none exists."""
        target = Path(path) if path is not None else self._checkpoint_path()
        if not target.is_file():
            return False

        def check(extra: dict[str, Any]) -> None:
            if extra.get("seed", self.seed) != self.seed:
                raise ValueError(
                    f"seed: the checkpoint {str(target)!r} was written with seed {extra['seed']}, "
                    f"this run has {self.seed}"
                )
            states = extra.get("callbacks", {})
            loss = extra.get("epoch_loss", [0.0, 0])
            if (
                not isinstance(states, dict)
                or not isinstance(extra.get("history", []), list)
                or not (isinstance(loss, list) and len(loss) == 2)
            ):
                raise FileFormatError(target, "corrupt trainer state in the checkpoint metadata")

        iteration, masks, extra = load_checkpoint(
            target,
            self.model,
            self.optimizer,
            scaler=self.scaler,
            device=self.device,
            check_extra=check,
        )
        self.iteration = iteration
        self.history = list(extra.get("history", []))
        loss_sum, loss_count = extra.get("epoch_loss", [0.0, 0])
        self._epoch_loss = (float(loss_sum), int(loss_count))
        self.set_masks(masks)
        states = extra.get("callbacks", {})
        for key, cb in zip(self._callback_keys(), self.callbacks):
            if key in states and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(states[key])
        return True

    def _callback_keys(self) -> list[str]:
        return [f"{i}:{type(cb).__name__}" for i, cb in enumerate(self.callbacks)]

    def _callback_states(self) -> dict[str, Any]:
        states = {}
        for key, cb in zip(self._callback_keys(), self.callbacks):
            state = cb.state_dict() if hasattr(cb, "state_dict") else None
            if state is not None:
                states[key] = state
        return states

    def _checkpoint_path(self) -> Path:
        if self.checkpoint_dir is None:
            raise ValueError("checkpoint_dir: not set; pass checkpoint_dir=... or a path")
        return checkpoint_file(self.checkpoint_dir)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Any,
    *,
    task: str = "classification",
    batch_size: int = 512,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    distributed: bool = False,
) -> dict[str, float]:
    """Mean loss, top-1 / top-5 accuracy (and perplexity for ``task="lm"``) of ``model`` on ``data``."""
    data = _as_data(data, "data")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    rank, world = dist_info() if distributed else (0, 1)
    n = len(data)
    start, stop = rank * n // world, (rank + 1) * n // world
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    has_top5 = True
    try:
        for i in range(start, stop, batch_size):
            x, y = data[i : min(i + batch_size, stop)]
            x, y = x.to(device), y.to(device)
            ctx = (
                torch.autocast(device_type=device.type, dtype=amp_dtype)
                if amp_dtype is not None
                else contextlib.nullcontext()
            )
            with ctx:
                out = model(x)
            out = out.float()
            logits = out.reshape(-1, out.shape[-1])
            targets = y.reshape(-1)
            count = targets.numel()
            if loss_fn is not None:
                loss = loss_fn(out, y).float() * count
            else:
                loss = F.cross_entropy(logits, targets, reduction="sum")
            k = min(5, logits.shape[-1])
            has_top5 = logits.shape[-1] >= 5
            top = logits.topk(k, dim=-1).indices
            hit = top == targets[:, None]
            sums += torch.stack(
                [
                    loss.double(),
                    hit[:, 0].sum().double(),
                    hit.any(dim=-1).sum().double(),
                    torch.tensor(float(count), dtype=torch.float64, device=device),
                ]
            )
    finally:
        model.train(was_training)
    if distributed:
        sums = all_reduce_sum(sums)
    count = max(float(sums[3]), 1.0)
    metrics = {"loss": float(sums[0]) / count, "top1": float(sums[1]) / count}
    if has_top5:
        metrics["top5"] = float(sums[2]) / count
    if task == "lm":
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
    return metrics
