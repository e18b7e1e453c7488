"""The LightningModule every method shares.

It owns what is common to all methods: the SGD optimizer with a backbone group and a head group,
the per-iteration poly learning-rate decay, gradient clipping, validation (inference mode ->
the task's scores, exact under DDP: tasks/), and what a checkpoint carries (validation history,
best score, every rank's random generators). A method subclass writes `training_losses(batch)` and
nothing else (`batch` a `data.batch.TrainBatch`); methods that step more than once per batch
override `training_step`.

Extension points for methods with more than one network (an EMA teacher, a projection head):
- `networks()`: the networks a checkpoint can be evaluated with, by name (`student`, `teacher`),
  as attribute paths of this module; `eval.model` chooses one, `default_eval_network` otherwise.
  Validation, the W&B panels, the channels_last switch and eval.py all use `eval_network`.
- `param_groups()`: the optimizer's parameter groups (anything outside them is not trained).
- `after_optimizer_step()`: runs after every optimizer step that really updated the weights
  (not after a step the 16-mixed GradScaler skipped), e.g. the EMA update of a teacher.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from semiseg.data.batch import TrainBatch
from semiseg.distributed import broadcast_buffers, gather_rng_states, seed_process, set_rng_state
from semiseg.errors import ConfigError, NonFiniteError
from semiseg.methods.losses import ce_dice, ohem_ce, supervised_ce
from semiseg.tasks import build_task

# Validation values are computed from the confusion matrix summed over ranks, so they are the same
# on every rank; Lightning's advice to all-reduce them (sync_dist) would only cost a collective.
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting")


class SemiSegModule(L.LightningModule):
    # What the data module must provide; methods that learn from unlabeled images override it.
    uses_unlabeled: bool = False
    num_strong_views: int = 0
    # What the run checks before training (run/build.py): a representation head on the
    # decoder's features needs a model that gives them.
    needs_decoder_features: bool = False
    # Whether the step trains a model's auxiliary head (model.aux_head; iMAS on Cityscapes): a
    # head no loss reaches would only hold unused parameters (DDP refuses them).
    trains_aux_head: bool = False

    # Several optimizer steps per batch: the method's `iteration(batch, optimizer, step)` takes
    # them all (semiseg.tools.bench times it whole); otherwise one step of `training_losses`.
    several_steps_per_batch: bool = False

    def __init__(
        self,
        model: nn.Module,
        class_names: list[str],
        optim: dict,
        evaluation: dict,
        crop_size: int,
        name: str = "supervised",
        labeled_loss: dict | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ):
        super().__init__()
        # Which network validation evaluates (`eval.model`): null = the method's default.
        self.eval_choice = evaluation.get("model")
        self.automatic_optimization = False  # every method takes its own optimizer steps
        self.model = model
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.optim_cfg = dict(optim)
        self.eval_cfg = dict(evaluation)
        self.crop_size = crop_size
        self.method_name = name
        self.labeled_loss_cfg = dict(labeled_loss or {"name": "ce"})
        # NHWC activations: faster convolutions with bf16/fp16 on recent GPUs and AMX CPUs.
        self.channels_last = bool(channels_last)
        # torch.compile of every network (`trainer.compile`), done in setup after the NHWC switch.
        self.compile_networks = bool(compile)
        if self.optim_cfg.get("name", "sgd") not in ("sgd", "adamw"):
            raise ConfigError(f"optim.name '{self.optim_cfg['name']}' is unknown: use sgd or adamw")
        if self.labeled_loss_cfg["name"] not in ("ce", "ohem", "ce_dice"):
            raise ConfigError(
                f"labeled_loss.name '{self.labeled_loss_cfg['name']}' is unknown: use ce, ohem "
                "or ce_dice"
            )
        # What a validation predicts and scores, and which score selects best.ckpt (tasks/).
        self.task = build_task(self.class_names, self.eval_cfg, crop_size)
        # Validation history survives checkpoints (see on_save_checkpoint) so resumed runs and
        # results.json see every evaluation. `best_score` is the best selection score
        # (task.selection: the mIoU, ACDC's mean Dice, the changed IoU).
        self.val_history: list[dict[str, float]] = []
        self.best_score = float("-inf")
        self.last_state: dict = {}  # the last validation's per-class scores (no tensors)
        self.last_scores: dict = {}  # the same with the confusion matrix (this process only)
        self.scoring_only = False  # eval.py sets it: validation keeps no history, logs nothing
        # The resolved run config, stored in checkpoints so eval.py can rebuild the model.
        self.run_config: dict | None = None
        # Steps skipped for a NaN or inf loss: in all, and in a row (see optimizer_step_with).
        self.nonfinite_steps = 0
        self.nonfinite_in_a_row = 0
        self._buffers_before: list[Tensor] = []

    # ------------------------------------------------------------------ data needs
    @classmethod
    def data_requirements(cls, method_cfg) -> dict[str, Any]:
        """Which streams the data module must yield for this method (read before building it)."""
        return {"unlabeled": cls.uses_unlabeled, "num_strong": cls.num_strong_views, "mix": None}

    @classmethod
    def needs_rgb_batches(cls, method_cfg) -> bool:
        """Whether the step draws intensity ops on RGB batches normalised with the ImageNet
        statistics (the in-step strong views, `strong_views=step`)."""
        return method_cfg.get("strong_views") == "step"

    # ------------------------------------------------------------------ networks
    default_eval_network = "student"

    def networks(self) -> dict[str, str]:
        """Evaluable networks: name -> attribute path in this module (state_dict prefix)."""
        return {"student": "model"}

    @property
    def eval_network_name(self) -> str:
        name = self.eval_choice or self.default_eval_network
        if name not in self.networks():
            raise ConfigError(
                f"eval.model={name!r}: method {self.method_name} evaluates one of "
                f"{', '.join(self.networks())}"
            )
        return name

    @property
    def eval_network(self) -> nn.Module:
        """The network validated, shown in the dashboards and saved for inference."""
        return self.get_submodule(self.networks()[self.eval_network_name])

    # ------------------------------------------------------------------ two views of an image
    # What select_images.py strategy=disagreement compares, in words (None: the method has one
    # prediction of an image only); `prediction_pair` gives the two.
    disagreement_views: str | None = None

    def prediction_pair(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of two predictions of the same images by this method's own networks or streams
        (in eval mode), whose disagreement ranks the images to label next."""
        raise ConfigError(f"method {self.method_name} has one prediction of an image only")

    # ------------------------------------------------------------------ optimisation
    def param_groups(self) -> list[dict]:
        """SGD groups as the papers: the backbone at `lr`, the rest of the model at
        `lr * lr_multi`. A method with parameters outside `self.model` adds its own groups."""
        cfg = self.optim_cfg
        return [
            {"params": list(self.model.backbone_parameters()), "lr": cfg["lr"]},
            {"params": list(self.model.head_parameters()), "lr": cfg["lr"] * cfg["lr_multi"]},
        ]

    def configure_optimizers(self):
        """`optim.name`: sgd (momentum; the papers' DeepLabV3+ runs) or adamw (`optim.betas`;
        UniMatch V2), both with `optim.weight_decay` on every parameter as the public codes."""
        cfg = self.optim_cfg
        groups = self.param_groups()
        for group in groups:
            group["initial_lr"] = group["lr"]
            group["lr"] = group["initial_lr"] * self.warmup_factor(0)
        if cfg.get("name", "sgd") == "adamw":
            betas = tuple(cfg.get("betas") or (0.9, 0.999))
            return torch.optim.AdamW(
                groups, lr=cfg["lr"], betas=betas, weight_decay=cfg["weight_decay"]
            )
        return torch.optim.SGD(
            groups,
            lr=cfg["lr"],
            momentum=cfg["momentum"],
            weight_decay=cfg["weight_decay"],
            nesterov=bool(cfg.get("nesterov", False)),
        )

    @property
    def total_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    def warmup_factor(self, step: int) -> float:
        """mmcv's linear warm-up (DAFormer's UDA schedule, `optim.warmup_iters`, 0 for none):
        1 - (1 - step / iters) * (1 - warmup_ratio) for the steps before `warmup_iters`."""
        iters = int(self.optim_cfg.get("warmup_iters") or 0)
        if step >= iters:
            return 1.0
        ratio = float(self.optim_cfg.get("warmup_ratio", 1e-6))
        return 1.0 - (1.0 - step / iters) * (1.0 - ratio)

    def poly_update(self, optimizer, iteration: int) -> None:
        """lr_t = lr * (1 - t / T) ** power, set after step t as the reference code does; during
        a warm-up, times the warm-up factor of the next step (step 0's is set when built); never
        below `optim.min_lr` (the public CSS PolyLR's max(poly, 1e-4); 0 elsewhere)."""
        factor = max(0.0, 1.0 - iteration / self.total_steps) ** self.optim_cfg["poly_power"]
        factor *= self.warmup_factor(iteration + 1)
        floor = float(self.optim_cfg.get("min_lr") or 0.0)
        for group in optimizer.param_groups:
            group["lr"] = max(group["initial_lr"] * factor, floor)

    def optimizer_step_with(self, loss: Tensor) -> bool:
        """One backward, one SGD step (clipping inside it, see below), then the poly update
        and, when the step really updated the weights, `after_optimizer_step`.

        A NaN or inf loss (on any rank) is not stepped: no backward, no optimizer step, and the
        BatchNorm statistics its forwards changed are put back, so the model is exactly as
        before. A finite loss whose gradients hold NaN or inf (an overflow in the backward) is
        skipped alike, after its backward: no optimizer step, no `after_optimizer_step` (the EMA
        teacher does not move). With the 16-mixed GradScaler the scaler makes that check itself
        (scaled gradients overflow by design; it skips the step and lowers its scale). The step
        does not count: global_step and the poly schedule stay where they were and the run still
        takes trainer.max_steps real steps. Returns whether it stepped.
        """
        optimizer = self.optimizers()
        iteration = self.global_step  # optimizer steps taken before this one
        optimizer.zero_grad(set_to_none=True)
        if not self._all_finite(loss):
            self._skip_step(loss)
            return False
        self.manual_backward(loss)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is None and not self._gradients_finite():
            optimizer.zero_grad(set_to_none=True)
            self._skip_step(loss, gradients=True)
            return False
        self.nonfinite_in_a_row = 0
        scale = scaler.get_scale() if scaler is not None else None
        optimizer.step()
        self.poly_update(optimizer, iteration)
        # The 16-mixed GradScaler skips a step with inf/NaN gradients and lowers its scale.
        if scaler is None or scaler.get_scale() >= scale:
            self.after_optimizer_step()
        return True

    def after_optimizer_step(self) -> None:
        """Called after each optimizer step that changed the weights (e.g. an EMA update)."""

    def _all_finite(self, loss: Tensor) -> bool:
        finite = bool(torch.isfinite(loss.detach()).all())
        if self.trainer.world_size > 1:  # every rank skips, or none: DDP's steps stay in sync
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        return finite

    def _gradients_finite(self) -> bool:
        """Whether every gradient is finite. Under DDP the backward has already averaged them
        over the ranks, so every rank sees the same answer without a collective."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return True
        return bool(torch.stack([g.isfinite().all() for g in grads]).all())

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # The BatchNorm statistics before this step's forwards, for a skipped step to restore.
        self._buffers_before = [b.detach().clone() for b in self.model.buffers()]

    def _skip_step(self, loss: Tensor, gradients: bool = False) -> None:
        """Put the BatchNorm statistics back, count the skipped step, stop after too many in a
        row. `gradients`: the loss was finite, its gradients were not."""
        with torch.no_grad():
            for buffer, before in zip(self.model.buffers(), self._buffers_before, strict=True):
                buffer.copy_(before)
        self.nonfinite_steps += 1
        self.nonfinite_in_a_row += 1
        self.log("train/nonfinite_steps", float(self.nonfinite_steps), on_step=True, batch_size=1)
        limit = int(self.optim_cfg.get("max_nonfinite_steps") or 0)
        what = "non-finite gradients of loss" if gradients else "loss"
        self.print(
            f"step {self.global_step}: {what} {float(loss.detach())} (on this or another rank): "
            f"step skipped ({self.nonfinite_in_a_row} in a row, {self.nonfinite_steps} in all)"
        )
        if limit and self.nonfinite_in_a_row >= limit:
            raise NonFiniteError(
                f"stopped at step {self.global_step}: {self.nonfinite_in_a_row} non-finite "
                f"losses or gradients in a row (optim.max_nonfinite_steps={limit}); lower optim.lr or set "
                "optim.clip_grad, and check the input images; the checkpoints written so far "
                "are kept"
            )

    def on_before_optimizer_step(self, optimizer) -> None:
        """Gradient clipping to `optim.clip_grad` (max norm; off when null).

        Lightning refuses Trainer(gradient_clip_val) with manual optimization, so the module clips.
        It must clip here: Lightning calls this hook inside optimizer.step(), after the 16-mixed
        GradScaler has unscaled the gradients. Clipping before optimizer.step() would clip the
        loss-scaled gradients (norms ~65536x too large) and, after unscaling, shrink every update
        to almost nothing. bf16-mixed and 32-bit have no scaler; the hook is right for them too.
        """
        clip = self.optim_cfg.get("clip_grad")
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def labeled_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """CE, or OHEM where the dataset asks for it (Cityscapes in the papers), or
        (CE + Dice) / 2 (ACDC in the public medical code)."""
        cfg = self.labeled_loss_cfg
        if cfg["name"] == "ce_dice":
            return ce_dice(logits, target)
        if cfg["name"] == "ohem":
            return ohem_ce(logits, target, cfg.get("thresh", 0.7), cfg.get("min_kept", 200_000))
        return supervised_ce(logits, target)

    def training_losses(self, batch: TrainBatch) -> dict[str, Tensor]:
        """Return a dict with the total `loss` and any terms to log. Written by each method."""
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> None:
        batch = TrainBatch.parse(batch)
        losses = self.training_losses(batch)
        if self.optimizer_step_with(losses["loss"]):
            self.log_train(losses, batch_size=len(batch.labeled))

    def log_train(self, values: dict[str, Tensor | float], batch_size: int) -> None:
        logs = {
            f"train/{k}": (v.detach() if isinstance(v, Tensor) else v) for k, v in values.items()
        }
        groups = self.optimizers().param_groups
        logs["train/lr_backbone"] = groups[0]["lr"]
        logs["train/lr_head"] = groups[1]["lr"]
        logs["train/nonfinite_steps"] = float(self.nonfinite_steps)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=batch_size)
        self.log(
            "loss", values["loss"].detach(), prog_bar=True, logger=False, batch_size=batch_size
        )

    # ------------------------------------------------------------------ memory format
    def setup(self, stage: str) -> None:
        if self.compile_networks and not getattr(self, "_compiled", False):
            # nn.Module.compile compiles in place: state_dict keys and the networks' forward
            # hooks stay as they are (checkpoints load into uncompiled models).
            for path in dict.fromkeys(self.networks().values()):
                self.get_submodule(path).compile()
            self._compiled = True
        if self.channels_last and not getattr(self, "_nhwc_hooks", None):
            # Weights and every input image (training, validation, partner forwards) in NHWC,
            # for every network of the method (a teacher predicts too).
            self._nhwc_hooks = []
            for path in dict.fromkeys(self.networks().values()):
                network = self.get_submodule(path)
                network.to(memory_format=torch.channels_last)
                self._nhwc_hooks.append(
                    network.register_forward_pre_hook(
                        lambda module, args: tuple(_channels_last(a) for a in args)
                    )
                )

    # ------------------------------------------------------------------ validation
    def validated_networks(self) -> dict[str, str]:
        """The networks each validation evaluates: the chosen one first (its scores are `val/*`,
        best checkpoint and results), then, with `eval.other_networks` (default true), the
        method's other networks, logged as `val/miou_<name>` (a teacher-student method shows
        whether its teacher leads or lags its student)."""
        chosen = self.eval_network_name
        names = [chosen]
        if self.eval_cfg.get("other_networks", True):
            names += [n for n in self.networks() if n != chosen]
        return {n: self.networks()[n] for n in names}

    def on_validation_epoch_start(self) -> None:
        self.task.start(list(self.validated_networks()), self.device)
        # Parameters are equal on every rank (DDP averages gradients), but buffers are not
        # broadcast in training, as in the papers: without SyncBatchNorm (CPUs) each rank's
        # BatchNorm statistics drift. Validate every rank with rank 0's, the ones checkpointed,
        # so the scores of a checkpoint do not depend on the number of ranks.
        if self.trainer.world_size > 1:
            for path in dict.fromkeys(self.validated_networks().values()):
                broadcast_buffers(self.get_submodule(path))

    def validation_step(self, batch, batch_idx: int) -> Tensor:
        """Every validated network predicts the batch; the task counts it. Returns the chosen
        network's prediction (eval.py's prediction writer saves it)."""
        chosen = self.eval_network_name
        for name, path in self.validated_networks().items():
            pred, mask = self.task.predict(self.get_submodule(path), batch)
            self.task.update(name, pred, mask, batch, chosen=name == chosen)
            if name == chosen:
                chosen_pred = pred
        return chosen_pred

    def on_validation_epoch_end(self) -> None:
        task = self.task
        scores = task.compute(self.eval_network_name)  # summed over ranks under DDP
        if self.trainer.sanity_checking:
            return
        self.last_scores = scores
        if self.scoring_only:  # eval.py: the scores are all it asks for
            return
        self.last_state = task.last_state(scores)
        entry = task.history_entry(self.global_step, scores)
        self.val_history.append(entry)
        self.best_score = max(self.best_score, entry[task.selection])
        # The scores come from confusion matrices already summed over ranks: every rank logs the
        # same numbers, so no sync_dist (which would all-reduce once per call).
        values = task.logged(scores)
        self.log("val/miou", scores["miou"], prog_bar=True, sync_dist=False)
        if task.selection != "miou":  # the selection score in the progress bar too
            name = f"val/{task.selection}"
            self.log(name, values.pop(name, entry[task.selection]), prog_bar=True, sync_dist=False)
        self.log(task.best_log_key, self.best_score, sync_dist=False)
        self.log_dict(values, sync_dist=False)
        self.print(task.line(self.global_step, scores, self.eval_network_name, self.best_score))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Called on every rank (Lightning dumps everywhere, rank 0 writes): gathering the ranks'
        # random generators is a collective that all of them take part in.
        self._refuse_nonfinite_weights(checkpoint["state_dict"])
        checkpoint["semiseg"] = {
            "config": self.run_config,
            "class_names": self.class_names,
            # eval.py loads the network validation used unless eval.model asks for another
            "networks": self.networks(),
            "eval_network": self.eval_network_name,
            "val_history": self.val_history,
            "best_score": self.best_score,
            "last_state": self.last_state,
            "nonfinite_steps": self.nonfinite_steps,
            # a resumed run goes on counting towards optim.max_nonfinite_steps
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "rng": gather_rng_states(),
            "wandb_run_id": next(
                (lg.version for lg in self.loggers if type(lg).__name__ == "WandbLogger"), None
            ),
        }

    def _refuse_nonfinite_weights(self, state_dict: dict) -> None:
        """A checkpoint with NaN or inf weights would replace a good one: stop instead, on every
        rank (all of them save, so the check is a collective too)."""
        bad = next(
            (k for k, v in state_dict.items() if v.is_floating_point() and not v.isfinite().all()),
            None,
        )
        finite = bad is None
        if self._trainer is not None and self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            raise NonFiniteError(
                f"refusing to write a checkpoint at step {self.global_step}: "
                f"{bad or 'a weight on another rank'} holds NaN or inf; the checkpoints written "
                "before are kept; lower optim.lr or set optim.clip_grad"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("semiseg", {})
        self.val_history = list(state.get("val_history", []))
        self.best_score = state.get("best_score", state.get("best_miou", float("-inf")))
        self.last_state = dict(state.get("last_state", {}))
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        self.nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        trainer = self._trainer
        if trainer is None or not state.get("rng"):
            return
        # Resume every rank's own random stream; ranks the checkpoint did not have (more
        # processes than before) get a stream of their own, derived from seed, rank and step.
        rank, states = trainer.global_rank, state["rng"]
        if rank < len(states):
            set_rng_state(states[rank])
        else:
            seed = int((self.run_config or {}).get("seed", 0))
            seed_process(seed * 1_000_003 + rank * 7919 + int(checkpoint.get("global_step", 0)))


def _channels_last(x):
    if isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x
