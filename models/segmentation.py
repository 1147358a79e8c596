"""`SegmentationModel`: an SMP encoder-decoder trained with an injected loss.

Data flow per training step (B slices, C classes, H x W pixels)::

    image (B, C_in, H, W) float32 --net--> logits (B, C, H, W) --loss(logits.float(), label)--> scalar
    label (B, H, W) int64 ----------------------------------------^

Validation pools a per-class confusion matrix over the whole validation set
(:class:`models.scores.PooledDiceIoU`) and logs ``val/dice/<class>``, ``val/iou/<class>`` and the
foreground means ``val/dice/mean``, ``val/iou/mean``.

Test segments each whole volume slice by slice at the training size
(:func:`models.inference.predict_volume`), scores every case with
:class:`models.evaluation.CaseEvaluator` (Dice, IoU, HD95, precision, recall per class; exact
under DDP) and logs ``test/<metric>/<class>`` and ``test/<metric>/mean``; the full table is
left in ``test_results`` for the report callback (``lightning_app.callbacks.TestReport``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import segmentation_models_pytorch as smp
import torch
from torch import nn

from models.evaluation import CaseEvaluator, TestResults
from models.inference import predict_volume
from models.loss_setup import apply_ignore_index, batch_context
from models.optimization import OptimizerFactory, SchedulerFactory, configure_optimization
from models.scores import PooledDiceIoU

__all__ = ["SegmentationModel", "metric_key", "OptimizerFactory", "SchedulerFactory"]

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def metric_key(class_name: str) -> str:
    """The metric-key form of a class name: runs of characters other than letters, digits,
    ``_``, ``.`` and ``-`` become ``_`` (``"right kidney" -> "right_kidney"``), so a name can
    never add a ``/`` level to ``val/dice/<class>``."""
    return _KEY_UNSAFE.sub("_", class_name.strip()) or "_"


class SegmentationModel(L.LightningModule):
    """2D segmentation LightningModule: ``smp.create_model(arch, ...)`` + injected loss.

    Batches (contract): ``{"image": float32 (B, C_in, H, W), "label": int64 (B, H, W)}``.

    Args:
        loss: the training criterion, ``loss(logits (B, C, H, W) float32, target (B, H, W) int64)
            -> scalar``; any ``losses`` preset or the user's own ``nn.Module``. If it has
            ``set_step(step)``, it is called with ``global_step`` before every training call; if
            it has ``last_values`` (compound loss), each term is logged as ``train/loss/<term>``;
            its submodules with ``hard_pixel_mask(logits, target)`` feed
            :meth:`hard_pixel_masks`.
        in_channels: input channels ``C_in`` (linked from the datamodule by the CLI).
        num_classes: classes ``C`` including background (linked from the datamodule).
        class_names: ``C`` names, background first (linked); default ``class_0 ... class_{C-1}``.
        arch: any segmentation_models_pytorch architecture name (``Unet``, ``UnetPlusPlus``,
            ``FPN``, ``DeepLabV3Plus``, ``Segformer``, ...).
        encoder_name: SMP encoder (``resnet18``, ``resnet34``, ``efficientnet-b0``, ...).
        encoder_weights: pretrained encoder weights (``"imagenet"`` needs the internet; default
            ``None``: random initialisation).
        optimizer: ``optimizer(params) -> Optimizer``; ``None`` = TransUNet's
            ``SGD(lr=0.01, momentum=0.9, weight_decay=1e-4)``.
        scheduler: ``scheduler(optimizer, total_steps) -> LRScheduler``, stepped every
            optimizer step; ``None`` = TransUNet's poly decay
            ``PolynomialLR(total_iters=total_steps, power=0.9)``, i.e.
            ``lr_t = lr_0 (1 - t / T)^0.9``.
        model_kwargs: extra keyword arguments for ``smp.create_model`` (e.g.
            ``decoder_channels``).
        image_size: training slice size ``S`` (linked from the datamodule); test volumes are
            resized slice by slice to ``S x S`` and the labels back (nearest). ``None``: taken
            from the trainer's datamodule at ``setup`` if it has one, else slices go in at
            their native size.
        test_protocol: the test protocol, ``"default"`` (aligned torch resizes, batched;
            undefined = NaN, left out of the means; HD95 in mm) or ``"transunet"``
            (TransUNet's ``test_single_volume`` slice path and its empty-mask and HD95
            conventions, comparable with published tables); see ``models.inference`` and
            ``models.metrics``. ``None`` (default): the datamodule's ``protocol`` (the CLI
            fills it in from ``data.protocol``; otherwise adopted at ``setup``, ``"default"``
            without a datamodule), so one data setting drives training and test.
        inference_batch_size: slices per forward pass at test time under the ``default``
            protocol (memory knob; ``transunet`` forwards one slice at a time, as TransUNet).
        ignore_index: label value of unannotated pixels (linked from the datamodule; nnU-Net's
            ``ignore`` label), or ``None``. It becomes the ``ignore_index`` of every loss term
            of the ``losses`` package, and its pixels are left out of every metric: they count
            as background in both prediction and target, so foreground scores and HD95 never
            see them.

    ``test_protocol`` and ``inference_batch_size`` are evaluation settings, not saved in the
    checkpoint's hyperparameters, so ``test --ckpt_path ... --model.test_protocol=transunet``
    takes effect (the CLI lets a checkpoint's hyperparameters override the command line).

    Raises:
        ValueError: on an unknown architecture, ``num_classes < 2``, ``in_channels < 1`` or
            ``len(class_names) != num_classes``, an unknown ``test_protocol`` or
            ``inference_batch_size < 1``.
        TypeError: if ``loss`` is not an ``nn.Module``.
    """

    def __init__(
        self,
        loss: nn.Module,
        in_channels: int,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        arch: str = "Unet",
        encoder_name: str = "resnet18",
        encoder_weights: str | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        model_kwargs: dict | None = None,
        image_size: int | None = None,
        test_protocol: Literal["default", "transunet"] | None = None,
        inference_batch_size: int = 32,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(
                f"Expected argument `loss` to be a torch.nn.Module, but got {type(loss).__name__}"
            )
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"Expected argument `num_classes` to be an int >= 2 (background included), "
                f"but got {num_classes!r}"
            )
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(
                f"Expected argument `in_channels` to be a positive int, but got {in_channels!r}"
            )
        if class_names is None:
            class_names = [f"class_{i}" for i in range(num_classes)]
        class_names = [str(n) for n in class_names]
        if len(class_names) != num_classes:
            raise ValueError(
                f"Expected argument `class_names` to have num_classes={num_classes} entries "
                f"(background first), but got {len(class_names)}: {class_names}"
            )
        keys = [metric_key(n) for n in class_names]
        if len(set(keys)) != len(keys):
            raise ValueError(
                f"Expected argument `class_names` to be distinct as metric keys, but got {keys}"
            )
        known = _smp_archs()
        if not isinstance(arch, str) or arch.lower() not in {a.lower() for a in known}:
            raise ValueError(
                f"Expected argument `arch` to be a segmentation_models_pytorch architecture "
                f"({', '.join(known)}), but got {arch!r}"
            )
        if not isinstance(inference_batch_size, int) or inference_batch_size < 1:
            raise ValueError(
                "Expected argument `inference_batch_size` to be an int >= 1, but got "
                f"{inference_batch_size!r}"
            )
        self.test_protocol = test_protocol
        self.test_evaluator = CaseEvaluator(num_classes, class_names, test_protocol or "default")
        self.inference_batch_size = inference_batch_size
        self.test_results: TestResults | None = None
        self.save_hyperparameters(ignore=["loss", "test_protocol", "inference_batch_size"])
        self.class_names = class_names
        self.class_keys = keys
        self.num_classes = num_classes
        self.net = smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=num_classes,
            **(model_kwargs or {}),
        )
        self.ignore_index = apply_ignore_index(loss, ignore_index, num_classes)
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # one torchmetrics object per stage (train: loss only)
        self.val_scores = PooledDiceIoU(num_classes)

    # ------------------------------------------------------------------ forward / loss
    def setup(self, stage: str) -> None:
        """Adopt the datamodule's ``image_size`` and ``protocol`` when none was given (outside
        the CLI)."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if self.hparams.get("image_size") is None and hasattr(datamodule, "image_size"):
            self.hparams.image_size = datamodule.image_size
        if self.test_protocol is None and hasattr(datamodule, "protocol"):
            self.test_evaluator = CaseEvaluator(
                self.num_classes, self.class_names, datamodule.protocol
            )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (B, C_in, H, W) -> ``logits`` (B, C, H, W); H, W must suit the encoder
        (multiples of 32 for the ResNet Unet)."""
        return self.net(image)

    def _criterion(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The losses are computed in float32 whatever the autocast precision (bf16-mixed).
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return self.loss(logits.float(), target)

    def hard_pixel_masks(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Hard-pixel maps of every loss (sub)module that selects pixels (topK losses).

        Args:
            logits: (B, C, H, W); target: (B, H, W) int64.

        Returns:
            ``{module name ("loss" for the loss itself, else "loss.<path>"): bool (B, H, W)}``;
            empty if no module has ``hard_pixel_mask``.
        """
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad(), torch.autocast(device_type=logits.device.type, enabled=False):
            for name, module in self.loss.named_modules():
                if hasattr(module, "hard_pixel_mask"):
                    key = "loss" if not name else f"loss.{name}"
                    out[key] = module.hard_pixel_mask(logits.float(), target).bool()
        return out

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step's loss.

        Raises:
            FloatingPointError: if the loss is NaN or infinite. The run stops before the
                backward pass and the optimiser step, so no checkpoint ever holds the weights
                that the bad batch would produce; the message names the global step, the batch
                index and the batch's case ids (the ``case`` / ``slice`` keys that
                ``SliceDataset`` items carry). Under DDP all processes stop at the same step.
            ValueError, TypeError: the loss's own input errors (e.g. non-finite logits under
                ``validate_args``), re-raised with the same context appended.
        """
        image, target = batch["image"], batch["label"]
        if hasattr(self.loss, "set_step"):
            self.loss.set_step(self.global_step)
        logits = self(image)
        error: ValueError | TypeError | None = None
        try:
            loss = self._criterion(logits, target)
        except (ValueError, TypeError) as err:
            error, loss = err, None
        failed = error is not None or not bool(torch.isfinite(loss))
        # under DDP every process stops at the same step (else the others wait in a collective)
        if self._on_any_process(failed):
            context = batch_context(batch, batch_idx, self.global_step, self.current_epoch)
            if error is not None:
                if type(error) in (ValueError, TypeError):
                    raise type(error)(f"{error} [{context}]") from error
                error.add_note(context)
                raise error
            if failed:
                what = f"Non-finite training loss ({loss.item()})"
            else:
                what = "Non-finite training loss or loss error on another process"
            raise FloatingPointError(
                f"{what} [{context}]. The run stops before this step's update: the last saved checkpoint is the last good state (resume "
                "from it after fixing the data, the learning rate or the precision)."
            )
        bs = image.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        terms = getattr(self.loss, "last_values", None)
        if isinstance(terms, dict):
            for name, value in terms.items():
                self.log(f"train/loss/{metric_key(str(name))}", value, batch_size=bs)
        return loss

    def _on_any_process(self, flag: bool) -> bool:
        """``flag`` OR-reduced over the processes of a distributed run (one all-reduce per call
        when there are several processes; ``flag`` itself otherwise)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return flag
        return bool(trainer.strategy.reduce_boolean_decision(flag, all=False))

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        image, target = batch["image"], batch["label"]
        logits = self(image)
        loss = self._criterion(logits, target)
        self.log("val/loss", loss, sync_dist=True, batch_size=image.shape[0])
        self.val_scores.update(*self._without_ignored(logits.argmax(dim=1), target))
        # returned for callbacks (image panels, hard-pixel maps); not stored by Lightning
        return {"logits": logits.detach()}

    def on_validation_epoch_end(self) -> None:
        scores = self.val_scores.compute()  # synced across processes
        self.val_scores.reset()
        for metric in ("dice", "iou"):
            values = scores[metric]
            for key, value in zip(self.class_keys, values, strict=True):
                self.log(f"val/{metric}/{key}", value.float(), sync_dist=False)
            self.log(
                f"val/{metric}/mean", scores[f"{metric}_mean"].float(), prog_bar=metric == "dice"
            )

    def _without_ignored(
        self, pred: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pred, target)`` with the ``ignore_index`` pixels set to background in both."""
        if self.ignore_index is None:
            return pred, target
        ignored = target == self.ignore_index
        return pred.masked_fill(ignored, 0), target.masked_fill(ignored, 0)

    # ------------------------------------------------------------------ test
    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Labels of a whole volume: ``image`` (C_in, D, H, W) -> int64 (D, H, W), slice by
        slice at ``image_size`` under the test protocol (see
        :func:`models.inference.predict_volume`)."""
        return predict_volume(
            self,
            image,
            self.hparams.image_size,
            self.inference_batch_size,
            protocol=self.test_evaluator.protocol,
        )

    def on_test_epoch_start(self) -> None:
        self.test_evaluator.reset()
        self.test_results = None

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """One whole case per batch (``image`` (1, C_in, D, H, W), ``label`` (1, D, H, W),
        ``spacing`` (1, 3), ``case``, ``index``); returns ``{"pred": (D, H, W)}`` for the
        report callback."""
        image = batch["image"]
        if image.ndim != 5 or image.shape[0] != 1:
            raise ValueError(
                "Expected test batches of one volume, image (1, C, D, H, W), but got "
                f"{tuple(image.shape)}"
            )
        pred = self.predict_volume(image[0])
        scored, label = self._without_ignored(pred, batch["label"][0])
        self.test_evaluator.update(
            scored, label, batch["spacing"][0], batch["case"][0], int(batch["index"][0])
        )
        return {"pred": pred}

    def on_test_epoch_end(self) -> None:
        # every process gets the whole deduplicated table, so the values agree on all ranks:
        # a max-sync leaves them unchanged (and spares Lightning's unsynced-epoch warning)
        self.test_results = self.test_evaluator.compute()
        for key, value in self.test_results.scalars(self.class_keys[1:]).items():
            self.log(key, value, sync_dist=True, reduce_fx="max")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """The CLI's ``predict`` on the datamodule's volumes (test batch format): returns
        ``{"case": str, "index": int, "pred": int64 (D, H, W)}`` per volume."""
        return {
            "case": batch["case"][0],
            "index": int(batch["index"][0]),
            "pred": self.predict_volume(batch["image"][0]),
        }

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict:
        """Optimizer over all parameters and a per-step scheduler for the whole fit
        (:func:`models.optimization.configure_optimization`).

        Raises:
            ValueError: if the fit has no finite length (``max_epochs=-1`` and ``max_steps=-1``).
        """
        return configure_optimization(
            self.parameters(),
            self.optimizer_factory,
            self.scheduler_factory,
            self.trainer.estimated_stepping_batches,
        )


def _smp_archs() -> list[str]:
    """Architecture names known to ``smp.create_model``."""
    return [cls.__name__ for cls in smp.MODEL_ARCHITECTURES_MAPPING.values()]
