"""AlignModule: the thin Lightning system every algorithm subclasses (models in, optimizer, sharding, logging)."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning as L
import torch
from torch import Tensor, nn
from transformers import get_scheduler

from alignkit.algorithms.configs.base import AlgorithmCard
from alignkit.checkpoints import trained_state_loaded
from alignkit.models.lora import AdaptersOff
from alignkit.ops.budget import equalise, token_budget_chunks
from alignkit.ops.lm_head import layout_options


def row_lengths(batch: dict[str, Tensor]) -> Tensor:
    """[B] real tokens of each row of a batch, over all its sequences (a pair's chosen and rejected)."""
    return sum(v.sum(-1) for k, v in batch.items() if k.endswith("attention_mask"))  # type: ignore[return-value]


def take_rows(batch: dict[str, Tensor], rows: Tensor) -> dict[str, Tensor]:
    """The batch's `rows`, its token columns cut to the longest of them (right padding beyond is dropped)."""
    masks = [v[rows] for k, v in batch.items() if k.endswith("attention_mask")]
    width = masks[0].shape[1]
    used = torch.stack([m.any(0) for m in masks]).any(0)
    last = int(used.nonzero().max()) + 1 if used.any() else width
    out = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            value = value[rows]
            if value.ndim == 2 and value.shape[1] == width and key != "index":
                value = value[:, :last]
        else:
            value = [value[i] for i in rows.tolist()]
        out[key] = value
    return out


def disable_dropout(model: nn.Module) -> None:
    """Every dropout of `model` to 0: its nn.Dropout modules and the attention dropout transformers keeps as a
    number (`attention_dropout`); LoRA's adapter dropout (`lora.dropout`, set on purpose) is left as it is."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Dropout) and "lora_dropout" not in name:
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def mark_forward_options(model: nn.Module, trainer: Any) -> None:
    """Mark every transformers model inside `model` (a reward wrapper holds one) with the run's choices of how
    log-probs and values are computed, read wherever they are taken (ops.lm_head.lean_supported, layout_options)."""
    for module in model.modules():
        if not hasattr(module, "config"):
            continue
        if not trainer.chunked_logprobs:
            module.alignkit_plain_head = True
        if trainer.padding_free != "auto":
            module.alignkit_padding_free = trainer.padding_free
        module.alignkit_shared_prompts = trainer.shared_prompts


class AlignModule(L.LightningModule):
    """A LightningModule that receives its models (it never builds them) and trains the `trained` ones.

    Subclasses set `card` (alignkit/algorithms/configs/<name>.py: the options, the sections it uses and
    trains, its data kind) and implement training_step/validation_step around a pure loss function.
    """

    card: ClassVar[AlgorithmCard]

    def __init__(self, cfg: Any, models: dict[str, nn.Module], tokenizer: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.algo = cfg.algorithm
        self.tokenizer = tokenizer
        for section, model in models.items():
            if section not in self.card.trained:
                model.requires_grad_(False)
            mark_forward_options(model, cfg.trainer)
            setattr(self, section, model)
        for section in self.card.trained:
            if section in models and cfg.trainer.disable_dropout:
                disable_dropout(models[section])
        # transformers returns models in eval mode and Lightning keeps the mode it is given: trained models train
        # (activation checkpointing and any dropout act only then), frozen ones stay in eval mode (self.train)
        self.train()
        self._configured = False
        self.last_eval_step = -1
        self.step_metrics: dict[str, Tensor | float] | None = None
        self.token_budget = cfg.trainer.max_tokens_per_micro_batch
        if self.token_budget:
            # a step's micro-batches are formed here, so the optimizer steps here (run.py then neither
            # accumulates nor clips)
            self.automatic_optimization = False
        self._chunk_metrics: list[tuple[dict[str, Tensor | float], Tensor]] | None = None

    def on_validation_epoch_end(self) -> None:
        self.last_eval_step = self.global_step

    @classmethod
    def build_default(cls, section: str, cfg: Any, models: dict[str, nn.Module], tokenizer: Any) -> nn.Module | None:
        """The model of a section the YAML leaves out, from those built so far; None = the section is unused.

        The reference defaults to a frozen copy of the policy's starting weights (PPO adds its critic).
        """
        if section == "reference" and "policy" in models:
            import copy

            return copy.deepcopy(models["policy"])
        return None

    @classmethod
    def record_kind(cls, cfg: Any) -> str | None:
        """The record kind this run loads: `records`, unless the algorithm also accepts another kind and
        converts it in prepare_datasets (KTO splits preference pairs into unpaired examples)."""
        return cls.card.records

    def prepare_datasets(self, train: Any, eval_set: Any) -> tuple[Any, Any]:
        """Reshape the tokenized train/eval sets before batching (e.g. KTO's mismatched pairs); default: as is."""
        return train, eval_set

    # -- checkpoints: trained state only -------------------------------------------------------------
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Every parameter that trains and every buffer; frozen parameters (the reference, reward models, the
        base under LoRA adapters) are left out, as torch's `StateDictOptions(ignore_frozen_params=True)` does:
        they are rebuilt from their config on resume, so a checkpoint's size follows what trains.

        Buffers stay (a reward normaliser's running statistics change in training). Lightning saves through
        this for single, DDP and FSDP runs (torch.distributed.checkpoint's get_model_state_dict calls it)."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for name, parameter in self.named_parameters(remove_duplicate=False):  # a tied weight under each name
            if not parameter.requires_grad:
                state.pop(prefix + name, None)
        return state

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """A checkpoint of trained state (state_dict above): frozen parameters keep the values they were built
        with; anything else missing or unexpected is an error when `strict`, as usual."""
        return trained_state_loaded(self, super().load_state_dict(state_dict, strict=False, assign=assign), strict)

    @property
    def frozen(self) -> list[str]:
        return [s for s in self.card.models if s not in self.card.trained and hasattr(self, s)]

    def train(self, mode: bool = True) -> AlignModule:
        # the system's mode is its trained models' (Lightning keeps it, restoring it after each evaluation);
        # frozen models stay in eval mode whatever it is
        super().train(mode)
        for section in self.frozen:
            getattr(self, section).eval()
        return self

    # -- optimisation --------------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        spec = self.cfg.trainer.optimizer
        decay, no_decay = [], []
        for section in self.card.trained:
            for p in getattr(self, section).parameters():
                if p.requires_grad:
                    # norms and biases are not decayed (the usual transformer recipe)
                    (decay if p.ndim >= 2 else no_decay).append(p)
        groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if spec.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum)
        else:
            cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
            opt = cls(groups, lr=spec.lr, betas=spec.betas, eps=spec.eps)
        sched_spec = self.cfg.trainer.scheduler
        total = int(self.trainer.estimated_stepping_batches)
        warmup = sched_spec.warmup_steps or int(sched_spec.warmup_ratio * total)
        sched = get_scheduler(sched_spec.name, opt, num_warmup_steps=warmup, num_training_steps=total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_model(self) -> None:
        """FSDP2: shard every model (trained and frozen) over the data-parallel mesh. Other strategies: activation
        checkpointing of the trained models, when `hardware.activation_checkpointing` asks for it."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        from alignkit.hardware import activation_checkpointing, shard_fsdp2

        if self._configured:
            return
        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            if self.cfg.hardware.activation_checkpointing:
                for section in self.card.trained:
                    if hasattr(self, section):
                        activation_checkpointing(getattr(self, section))
            self._configured = True
            return

        for section in self.card.models:
            # a reference that is the policy with its adapters off holds no weights of its own
            if hasattr(self, section) and not isinstance(getattr(self, section), AdaptersOff):
                shard_fsdp2(getattr(self, section), self.device_mesh, self.cfg.hardware)
        self._configured = True

    # -- steps ---------------------------------------------------------------------------------------
    def step(self, batch: dict[str, Tensor], split: str) -> Tensor:
        """One batch's loss, logged under `<split>/`; offline algorithms implement only this."""
        raise NotImplementedError(f"{type(self).__name__} implements step() or training_step()")

    def share(self, batch: dict[str, Tensor]) -> Tensor:
        """What a micro-batch's loss is an average over (its rows; SFT's token mean: its trained tokens), so that
        micro-batches of a step weighted by their shares give the loss of the whole step at once."""
        return torch.tensor(float(len(next(v for v in batch.values() if isinstance(v, Tensor)))))

    def budget_chunks(self, lengths: Tensor, *, keep_order: bool = False) -> list[Tensor]:
        """Row indices of micro-batches filled to `trainer.max_tokens_per_micro_batch` (alignkit/ops/budget.py),
        as many on every process."""
        pack = layout_options(self.policy)[0] if hasattr(self, "policy") else False
        chunks = token_budget_chunks(lengths, self.token_budget, packed=pack, keep_order=keep_order)
        if self.trainer.world_size > 1:
            count = self.all_gather(torch.tensor(len(chunks), device=self.device)).max()
            chunks = equalise(chunks, int(count))
        return chunks

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if not self.token_budget:
            return self.step(batch, "train")
        # A step's rows in micro-batches filled to the token budget, each loss weighted by its share of the step.
        # DDP and FSDP average the processes' gradients, as they average their micro-batch losses without it.
        opt, sched = self.optimizers(), self.lr_schedulers()
        parts = [take_rows(batch, rows) for rows in self.budget_chunks(row_lengths(batch))]
        shares = torch.stack([self.share(part) for part in parts])
        weights = (shares / shares.sum().clamp(min=1.0)).tolist()
        opt.zero_grad()
        self._chunk_metrics = []
        try:
            for part, weight in zip(parts, weights, strict=True):
                self.manual_backward(self.step(part, "train") * weight)
        finally:
            collected, self._chunk_metrics = self._chunk_metrics, None
        if self.cfg.trainer.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.trainer.gradient_clip_val)
        opt.step()
        sched.step()
        # the step's metrics: each micro-batch's weighted by its share (the loss is then the step's loss)
        metrics = {
            k: sum(float(m[k]) * w for (m, _), w in zip(collected, weights, strict=True))
            for k in collected[0][0]
            if all(k in m for m, _ in collected)
        }
        self.log_split("train", metrics, batch_size=sum(int(n) for _, n in collected))
        return None

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if not self.token_budget:
            self.step(batch, "eval")
            return
        for rows in self.budget_chunks(row_lengths(batch)):
            self.step(take_rows(batch, rows), "eval")

    # -- logging -------------------------------------------------------------------------------------
    def log_split(self, split: str, metrics: dict[str, Tensor | float], batch_size: int) -> None:
        """Log `<split>/<name>` tags: per step for train, averaged over the epoch (all ranks) for eval."""
        step = split == "train"
        if step and self._chunk_metrics is not None:  # a micro-batch of a token-budget step: logged as a whole
            self._chunk_metrics.append((metrics, torch.tensor(batch_size)))
            return
        if step:
            self.step_metrics = metrics  # the batch's train metrics, for the progress lines (alignkit.console)
        if step and not self.automatic_optimization:
            self._log_iteration(metrics, batch_size)
            return
        self.log_dict(
            {f"{split}/{k}": v.detach() if isinstance(v, Tensor) else float(v) for k, v in metrics.items()},
            on_step=step,
            on_epoch=not step,
            sync_dist=not step,
            batch_size=batch_size,
        )

    def _log_iteration(self, metrics: dict[str, Tensor | float], batch_size: int) -> None:
        """Train metrics of an online iteration, written to every logger at the iteration's step (rank 0).

        Lightning writes every key it has seen at every step, repeating a key's last value where a step did
        not log it; online iterations log different keys (PPO's and rejection-sampling rounds'), so they go to
        the loggers directly, and through self.log only for the run's final metrics.
        """
        values = {f"train/{k}": float(v) for k, v in metrics.items()}
        iteration = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        if self.trainer.is_global_zero and iteration % self.trainer.log_every_n_steps == 0:
            for logger in self.loggers:  # every tracker of logging.loggers
                logger.log_metrics(values, step=iteration)
        self.log_dict(values, on_step=True, on_epoch=False, logger=False, batch_size=batch_size)
