"""One generic trainer for every model (no subclass per model).

It shuffles the model's own training examples with an explicit generator, minimises the sum of
the model's named losses with AdamW, calls a validation function after each epoch and keeps the
best state by that value (model and epoch selection on the validation split only; the test split
is never seen here). It stops on patience or on ``max_epochs``, never on the wall clock: time is
measured and reported, so a result does not depend on how busy the machine was. A run whose best
epoch is its last allowed one had not stopped improving: it is reported as not converged.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler
from tqdm.auto import tqdm

from benchmark import distributed as D
from benchmark.device import module_device, to_device
from benchmark.machine import PeakMemory
from benchmark.model import RankingModel, StagedTraining

log = logging.getLogger(__name__)


LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class TrainConfig:
    max_epochs: int = 30  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # training examples per step
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    patience: int = 3  # epochs without validation gain before stopping
    min_epochs: int = 0  # patience may stop a run only once it has trained this many epochs
    grad_clip: float = 5.0  # max gradient norm; 0 disables
    # The learning rate over the main stage's steps: "constant" (suite v2), or a transformers schedule
    # ("linear", "cosine") that decays to 0 over max_epochs epochs after a linear warm-up over
    # ``warmup_ratio`` of them. Earlier stages (KARMA's warm-up) run at the base rate. With patience
    # stopping, a decay reaches its end only at the epoch cap: set the cap the schedule should span.
    lr_schedule: str = "constant"
    warmup_ratio: float = 0.0
    progress: bool = True  # tqdm bars

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError(f"train.max_epochs, train.batch_size and train.patience must be >= 1, got "
                             f"{self.max_epochs}, {self.batch_size}, {self.patience}")
        if self.min_epochs < 0:
            raise ValueError(f"train.min_epochs must be >= 0 (0: patience may stop any epoch), got {self.min_epochs}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"train.weight_decay and train.grad_clip must be >= 0 (grad_clip 0 disables it), got "
                             f"{self.weight_decay}, {self.grad_clip}")
        if self.lr_schedule not in LR_SCHEDULES or not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES} and train.warmup_ratio in [0, 1), got "
                             f"{self.lr_schedule!r}, {self.warmup_ratio}")


@dataclass
class TrainResult:
    best_epoch: int | None = None
    epochs_run: int = 0
    valid_value: float | None = None
    train_seconds: float = 0.0
    examples_per_second: float | None = None
    step_seconds: float = 0.0  # training passes of every stage, without validation
    # decoder positions the training steps fed (for models that count ``tokens_seen``), across resumes;
    # None when not counted or a resumed checkpoint predates the count
    tokens_seen: int | None = None
    stopped_by: str = "nothing to train"
    converged: bool | None = None  # False when the best epoch is the last allowed one (None: nothing trained)
    history: list[dict] = field(default_factory=list)  # per epoch: losses and validation value
    # the finished run's last checkpoint, kept until the caller has written what it trained for (see train)
    checkpoint: Path | None = None


def patience_stops(config: TrainConfig, epoch: int, since_best: int) -> bool:
    """Whether the stopping rule ends a run after ``epoch`` with ``since_best`` epochs without a
    validation gain. Before ``min_epochs`` it never does: a noisy validation curve can otherwise stop
    a run at its first epochs (patience 3 after a peak at epoch 1), long before most runs peak."""
    return since_best >= config.patience and epoch >= config.min_epochs


def _tally(best: float, since_best: int, value: float) -> tuple[float, int]:
    """The best validation value and the epochs since it, after an epoch that validated at ``value``:
    the one count both the loop and ``reaches`` keep."""
    return (value, 0) if value > best else (best, since_best + 1)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """What training changes: the trainable parameters and the persistent buffers (a frozen backbone's
    weights are rebuilt from its checkpoint, so neither selection nor resuming needs a copy)."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in keep}  # device-free


def _save_checkpoint(path: Path, blob: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the previous epoch's checkpoint, never half of one


def _read_checkpoint(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign: train from the start
        log.warning("ignoring unreadable checkpoint %s: %s", path, err)
        return None


def _load_checkpoint(path: Path | None, identity: str) -> dict | None:
    blob = _read_checkpoint(path)
    return blob if blob is not None and blob.get("identity") == identity else None


def reaches(config: TrainConfig, history: list[dict], epoch: int) -> bool:
    """Whether ``config``'s stopping rule trains a run whose validation curve began as ``history`` (its
    main-stage entries) through ``epoch``: neither its cap nor patience ends it before. The weights, the
    optimizer and the best state after an epoch do not depend on the rule, so a run another rule trained
    that far is this rule's run at that epoch."""
    best, since_best = -math.inf, 0
    for entry in (h for h in history if h.get("stage") == "main"):
        if entry["epoch"] >= epoch:
            break
        best, since_best = _tally(best, since_best, entry["valid"])
        if patience_stops(config, entry["epoch"], since_best):
            return False
    return epoch <= config.max_epochs


def _load_extendable(paths: Sequence[Path], lineage: str, config: TrainConfig) -> tuple[dict | None, Path | None]:
    """The first of ``paths`` (checkpoints of the same run under another stopping rule) that this
    config's rule would have trained at least as far: it resumes from there, and a run that an earlier,
    stricter rule stopped trains on instead of starting again."""
    for path in paths:
        blob = _read_checkpoint(path)
        if blob is not None and lineage and blob.get("lineage") == lineage \
                and reaches(config, blob["history"], blob["epoch"]):
            return blob, path
    return None, None


def train(model: RankingModel, log_, config: TrainConfig, generator: torch.Generator,
          validate: Callable[[RankingModel], float], lr: float, desc: str = "",
          checkpoint: Path | None = None, identity: str = "", lineage: str = "", earlier: Sequence[Path] = (),
          probe: Callable[[RankingModel], dict | None] | None = None) -> TrainResult:
    """Train ``model`` in place with AdamW at ``lr`` (the model config's own, which its tuning search
    chooses); on return it holds the best-validation weights.

    With ``checkpoint``, the state after every epoch (trainable weights, optimizer, best state so far,
    history, and the random streams: the shuffling generator and torch's global one) is saved there,
    and a run interrupted at any point resumes from its last finished epoch to the same result as an
    uninterrupted one; ``identity`` (the run's settings) must match. The file outlives training: a
    process killed while evaluating the trained model, or a search trial whose settings a later
    process's run shares, resumes from it straight to the same result instead of training again. Its
    path is ``result.checkpoint``; the caller deletes it once the record is written, unless it keeps
    finished runs' checkpoints. ``lineage`` is ``identity`` without the stopping rule: with no checkpoint
    of this identity, the run resumes from the first of ``earlier`` of its lineage (the same run under
    another patience, floor or cap) that this rule would have trained as far (``reaches``), so loosening
    the rule extends kept runs instead of training them again; a stricter one that would have stopped
    sooner trains from the start.
    (A model's own private generators, e.g. KARMA's visual-head noise, are not saved.)
    ``probe`` (optional) measures the model after each epoch's validation; what it returns is kept in
    that epoch's history entry under "probe"."""
    result = TrainResult()
    memory = PeakMemory.innermost()  # the run's sampler, if the caller opened one: checkpoints carry its peak
    dataset = model.train_dataset(log_, generator)
    if dataset is None or len(dataset) == 0 or not any(p.requires_grad for p in model.parameters()):
        if hasattr(model, "eval"):  # a model need not be an nn.Module (e.g. a fitted item-kNN)
            model.eval()
        return result
    loader = _loader(dataset, model, config, generator)
    params = [p for p in model.parameters() if p.requires_grad]
    losses = D.loss_function(model)  # DDP under torchrun
    device = module_device(model)  # batches follow the model (benchmark.device)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    start = time.perf_counter()
    best_state, best_value, since_best = None, -math.inf, 0
    train_time, seen, first_epoch = 0.0, 0, 1
    tokens_counted = True
    stages = model.stages(log_, generator) if isinstance(model, StagedTraining) else []
    resumed, source = _load_checkpoint(checkpoint, identity), checkpoint
    if resumed is None:
        resumed, source = _load_extendable(earlier, lineage, config)
    if resumed is not None:
        model.load_state_dict(resumed["model"], strict=False)
        optimizer.load_state_dict(resumed["optimizer"])
        generator.set_state(resumed["generator"])
        torch.set_rng_state(resumed["torch_rng"])
        if resumed.get("cuda_rng") is not None and torch.cuda.is_available():  # dropout on a GPU draws there
            torch.cuda.set_rng_state_all(resumed["cuda_rng"])
        best_state, best_value, since_best = resumed["best_state"], resumed["best_value"], resumed["since_best"]
        train_time, seen, first_epoch = resumed["train_time"], resumed["seen"], resumed["epoch"] + 1
        result.history, result.best_epoch = resumed["history"], resumed["best_epoch"]
        result.epochs_run, result.step_seconds = resumed["epoch"], resumed["step_seconds"]
        if resumed.get("tokens_seen") is not None:  # the model counts in memory: carry the earlier processes'
            model.tokens_seen = resumed["tokens_seen"]
        tokens_counted = "tokens_seen" in resumed  # a checkpoint written before the count carried it
        if resumed.get("peak_memory_mb") and memory is not None:  # the record counts the earlier processes' peak
            memory.include(resumed["peak_memory_mb"])
        start -= resumed.get("elapsed", 0.0)  # train_seconds counts the earlier processes' time too
        stages = []  # checkpoints are written after the stages
        print(f"{desc}: resumed after epoch {resumed['epoch']} from {source}", flush=True)

    def save(epoch: int) -> None:
        if checkpoint is not None and D.is_main():
            _save_checkpoint(checkpoint, {
                "identity": identity, "lineage": lineage, "epoch": epoch, "model": trainable_state(model),
                "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
                "best_state": best_state, "best_value": best_value,
                "since_best": since_best, "best_epoch": result.best_epoch, "history": result.history,
                "train_time": train_time, "seen": seen, "step_seconds": result.step_seconds,
                "tokens_seen": getattr(model, "tokens_seen", None), "elapsed": time.perf_counter() - start,
                "peak_memory_mb": None if memory is None else memory.peak_mb,
                "scheduler": None if scheduler is None else scheduler.state_dict()})

    # Earlier stages (e.g. KARMA's semantic warm-up) run first, without validation or selection.
    for name, stage_data, epochs in stages:
        stage_loader = _loader(stage_data, model, config, generator)
        for epoch in range(1, epochs + 1):
            model.train()
            stage_start = time.perf_counter()
            sums = _run_epoch(losses, stage_loader, device, optimizer, params, config, generator, f"{desc} {name} {epoch}")
            result.step_seconds += time.perf_counter() - stage_start
            result.history.append({"stage": name, "epoch": epoch, **sums})
            log.info("%s %s epoch %d: %s", desc, name, epoch, " ".join(f"{k}={v:.4f}" for k, v in sums.items()))
    scheduler = _lr_scheduler(optimizer, config, len(loader))  # made after the stages: they run at the base rate
    if scheduler is not None and resumed is not None:
        scheduler.load_state_dict(resumed["scheduler"])
        for group, rate in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = rate  # making the scheduler set its first rate; the run had reached this one
    if stages:
        save(0)
    result.stopped_by = "max_epochs"
    for epoch in range(first_epoch, config.max_epochs + 1):
        if patience_stops(config, epoch - 1, since_best):  # resumed after the epoch that stopped it
            result.stopped_by = "patience"
            break
        model.train()
        epoch_start = time.perf_counter()
        sums = _run_epoch(losses, loader, device, optimizer, params, config, generator, f"{desc} epoch {epoch}",
                          scheduler)
        if scheduler is not None:
            sums["lr"] = scheduler.get_last_lr()[0]  # the rate the next step uses
        seen += len(dataset)
        train_time += time.perf_counter() - epoch_start
        model.eval()
        value = float(validate(model))
        result.history.append({"stage": "main", "epoch": epoch, **sums, "valid": value})
        measured = probe(model) if probe is not None else None  # a diagnostic: it must not touch training
        if measured:
            result.history[-1]["probe"] = measured
        line = f"{desc} epoch {epoch}: " + " ".join(f"{k}={v:.4f}" for k, v in sums.items()) + f" valid={value:.5f}"
        log.info(line)
        if not config.progress:  # without bars, one line per epoch shows a long run moving
            print(f"{line} ({time.perf_counter() - epoch_start:.0f} s)", flush=True)
        result.epochs_run = epoch
        best_value, since_best = _tally(best_value, since_best, value)
        if since_best == 0:
            best_state, result.best_epoch = trainable_state(model), epoch
        save(epoch)
        if patience_stops(config, epoch, since_best):
            result.stopped_by = "patience"
            break
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)  # the frozen rest never changed
    model.eval()
    result.valid_value = best_value if best_state is not None else None
    result.converged = result.best_epoch is not None and result.best_epoch < config.max_epochs
    result.train_seconds = time.perf_counter() - start
    result.examples_per_second = seen / train_time if train_time > 0 else None
    result.step_seconds += train_time
    result.tokens_seen = (getattr(model, "tokens_seen", None) or None) if tokens_counted else None
    if checkpoint is not None and checkpoint.exists() and D.is_main():
        result.checkpoint = checkpoint
    return result


def discard_checkpoint(result: TrainResult) -> None:
    """Delete a finished run's checkpoint (``train`` keeps it) once nothing needs to resume from it."""
    if result.checkpoint is not None and D.is_main():
        result.checkpoint.unlink(missing_ok=True)
        result.checkpoint = None


def _lr_scheduler(optimizer, config: TrainConfig, steps_per_epoch: int):
    """The main stage's rate schedule (transformers' schedules, stepped once per optimizer step), or None
    for a constant rate without warm-up: suite v2's runs, which then step the optimizer alone."""
    if config.lr_schedule == "constant" and config.warmup_ratio == 0:
        return None
    from transformers import get_scheduler

    total = config.max_epochs * steps_per_epoch
    name = "constant_with_warmup" if config.lr_schedule == "constant" else config.lr_schedule
    return get_scheduler(name, optimizer, num_warmup_steps=round(config.warmup_ratio * total),
                         num_training_steps=total)


def _run_epoch(losses, loader, device, optimizer, params, config: TrainConfig, generator,
               desc: str, scheduler=None) -> dict[str, float]:
    """One pass over ``loader`` (``losses``: the model's, or its DDP wrapper); returns the mean of each
    named loss term (under DDP, averaged over the processes' shards)."""
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=desc, leave=False, disable=not config.progress)
    for batch in bar:
        terms = losses(to_device(batch, device), generator)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: non-finite loss {({k: float(v) for k, v in terms.items()})}; "
                                     "lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    return D.mean_over_processes({k: v / max(len(loader), 1) for k, v in sums.items()})


class LengthGroupedBatches(Sampler):
    """Shuffled batches of examples of similar length (``dataset.lengths``), so padded sequence
    models compute on few padding positions. Each epoch: shuffle, cut into pools of 50 batches,
    sort each pool by length, batch it, shuffle the batch order (HF's ``group_by_length`` idea)."""

    def __init__(self, lengths, batch_size: int, generator: torch.Generator, pool: int = 50):
        self.lengths = torch.as_tensor(lengths)
        self.batch_size, self.generator, self.pool = batch_size, generator, pool

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=self.generator)
        size = self.batch_size * self.pool
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += [chunk[i:i + self.batch_size].tolist() for i in range(0, len(chunk), self.batch_size)]
        for b in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[b]

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def _loader(dataset, model, config: TrainConfig, generator: torch.Generator) -> DataLoader:
    if getattr(dataset, "lengths", None) is not None:
        batches = LengthGroupedBatches(dataset.lengths, config.batch_size, generator)
    elif D.world_size() > 1:  # what DataLoader(shuffle=True, generator=...) builds, made explicit to shard it
        batches = BatchSampler(RandomSampler(dataset, generator=generator), config.batch_size, drop_last=False)
    else:
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, generator=generator,
                          collate_fn=model.collate, num_workers=0)
    if D.world_size() > 1:  # every process draws the same batches and takes its share of each
        batches = D.ShardedBatches(batches, D.world_size(), D.rank())
    return DataLoader(dataset, batch_sampler=batches, collate_fn=model.collate, num_workers=0)
