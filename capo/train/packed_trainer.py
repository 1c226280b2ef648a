"""The shared-prefix CAPO trainer: a TRL `DPOTrainer` that trains a PEFT adapter on packed (prompt, chosen,
rejected_1..k) groups (`capo.train.packed`: packing, block masks, losses; `recipes/capo.py --shared_prefix true`).

A batch is `per_device_train_batch_size` *groups* (1-3 pairs each). Losses: `sigmoid`, optionally plus `sft`
(weighted by `loss_weights`), as TRL computes them, but averaged over all pairs (sft: chosen tokens) of the step
across ranks and accumulated micro-batches. The reference is the frozen "ref" adapter (a copy of the starting
adapter) or the base model with adapters disabled. Any `DPOConfig` option it does not implement is refused with a
`DataError` (see `capo.train.packed.unsupported_options`), and so are several GPUs in one process (DataParallel would
split the packed row's 1-D index tensors: use `accelerate launch`). On CUDA an sdpa model trains with FlexAttention
block masks (`capo.train.packed.training_attention`), elsewhere with a dense block mask. The idea is that of prefix
sharing for DPO (arXiv 2410.20305); it uses private TRL API (`_prepare_dataset`, `_set_signature_columns_if_needed`,
`_metrics`, `_total_train_tokens`, `use_adapter`), so the TRL pin and `tests/test_explainers_packed.py` (loss and
gradients equal `DPOTrainer`'s) guard upgrades.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft import PeftModel
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from capo.errors import DataError
from capo.train.packed import (
    block_attention_mask,
    check_options,
    collate_groups,
    dpo_sigmoid_losses,
    group_rows,
    pair_logps,
    training_attention,
)


class SharedPrefixDPOTrainer(DPOTrainer):
    loss_is_scaled_for_ga = True  # compute_loss already divides by the counts of the whole accumulated step

    def __init__(self, model, ref_model=None, args: DPOConfig | None = None, **kwargs):
        check_options(args or DPOConfig(), ref_model)
        if args is not None and args.n_gpu > 1:  # Trainer would wrap the model in DataParallel
            raise DataError(f"shared-prefix training sees {args.n_gpu} GPUs in one process, where DataParallel would "
                            "split the packed row's index tensors: run it with `accelerate launch` (one process per "
                            "GPU), or make one GPU visible (CUDA_VISIBLE_DEVICES)")
        kwargs.setdefault("data_collator", collate_groups)
        super().__init__(model, args=args, **kwargs)
        if not isinstance(self.model, PeftModel):
            raise DataError("shared-prefix training trains a PEFT adapter: pass peft_config or a PeftModel")
        if self.aux_loss_enabled:
            raise DataError("shared-prefix training does not add the MoE router loss: set router_aux_loss_coef 0")
        base = self.model.get_base_model()
        attention = training_attention(base, self.accelerator.device)  # now rather than at the first step
        if attention != base.config._attn_implementation:
            base.set_attn_implementation(attention)  # FlexAttention block masks on CUDA

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return group_rows(dataset, processing_class, args.max_length)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids", "pair_index"]

    def _step_counts(self, batches: Sequence[dict]):
        """[pairs, chosen tokens] of these micro-batches, summed over all ranks, on the training device."""
        local = torch.tensor([[len(b["pair_rows"]), b["chosen_tokens"]] for b in batches],
                             dtype=torch.float32, device=self.accelerator.device).sum(0)
        return self.accelerator.reduce(local, reduction="sum")

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        # The accumulated step's counts travel to compute_loss as `num_items_in_batch`.
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        return batch_samples, (self._step_counts(batch_samples) if batch_samples else None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        counts = num_items_in_batch if num_items_in_batch is not None else self._step_counts([inputs])
        unwrapped = self.accelerator.unwrap_model(self.model)
        mask = block_attention_mask(inputs, unwrapped.config._attn_implementation, unwrapped.dtype)
        chosen, rejected = pair_logps(model, inputs, mask, unwrapped=unwrapped)
        with (torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
              use_adapter(unwrapped, "ref" if "ref" in unwrapped.peft_config else None)):
            ref_chosen, ref_rejected = pair_logps(self.model, inputs, mask)
        loss = 0.0
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sigmoid":
                losses = dpo_sigmoid_losses((chosen, rejected), (ref_chosen, ref_rejected), self.beta)
                term = losses.sum() / counts[0]
            else:  # "sft": NLL per chosen token, every pair's chosen counted, as TRL does
                term = -chosen.sum() / counts[1]
            loss = loss + weight * term
        # DDP averages gradients over ranks: scaled by the world size, that average is the gradient of the
        # step's mean over all pairs (and the mean of the per-rank losses is that mean).
        loss = loss * self.accelerator.num_processes
        self._log_metrics(mode, inputs, (chosen, rejected), (ref_chosen, ref_rejected))
        return (loss, {"chosen_logps": chosen, "rejected_logps": rejected}) if return_outputs else loss

    REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                      "logps/chosen", "logps/rejected")

    def _log_metrics(self, mode, inputs, policy, reference):
        """Per-pair sums of TRL's reward / logp metrics over all ranks (one reduce); `log` divides them by the
        pair count of the logging window, so micro-batches of 2 and 3 pairs weigh 2 and 3."""
        with torch.no_grad():
            chosen_rewards = self.beta * (policy[0] - reference[0])
            rejected_rewards = self.beta * (policy[1] - reference[1])
            margins = chosen_rewards - rejected_rewards
            sums = torch.stack([chosen_rewards.sum(), rejected_rewards.sum(), (margins > 0).float().sum(),
                                margins.sum(), policy[0].sum(), policy[1].sum(),
                                torch.tensor(float(len(margins)), device=margins.device),
                                torch.tensor(float(inputs["tokens"]), device=margins.device)]).float()
            sums = self.accelerator.reduce(sums, reduction="sum").tolist()
        for name, total in zip(self.REWARD_METRICS, sums[:6], strict=True):
            self._metrics[mode][name].append(total)
        self._metrics[mode]["pairs"].append(sums[6])
        if mode == "train":
            self._total_train_tokens += int(sums[7])  # packed tokens forwarded (each pass), all ranks
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def log(self, logs, start_time=None):
        metrics = self._metrics["train" if self.model.training else "eval"]
        pairs = sum(metrics.pop("pairs", []))
        for name in self.REWARD_METRICS:
            if metrics.get(name):
                metrics[name] = [sum(metrics[name]) / pairs]  # TRL's log then averages a 1-item list
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        # The same value on every rank (the micro-batch mean over all ranks' pairs), so however the evaluation
        # loop gathers and trims the per-rank losses, their mean is right.
        return self.accelerator.reduce(loss.detach(), reduction="mean"), None, None
