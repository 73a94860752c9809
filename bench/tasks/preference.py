"""`objective = "dpo"`: TRL's Direct Preference Optimization on (image, prompt, chosen, rejected) pairs, trained in
bench's own loop so that its cost is measured like any other cell's.

TRL does the DPO part: its DataCollatorForVisionPreference writes each pair through the processor's chat template
(prompt, then the chosen and the rejected answer, with a completion mask on the answers), and its DPOTrainer computes
the loss (sigmoid DPO with `beta`) and holds the reference model. The reference is TRL's: for an adapter, a frozen copy
of the adapter as training starts (its "ref" adapter) — the base model for a fresh adapter, the SFT adapter for a cell
that starts from one (`start_from`) — and for full fine-tuning a frozen copy of the model. bench's loop supplies the
batches, the optimizer, the schedule and the measurements; the trainer is used for its loss only.

Quality is the family task's own (answers generated for the eval prompts, scored against the chosen answer), plus, in
extra, TRL's reward statistics on the held-out pairs: preference_accuracy (share of pairs whose implicit reward
β·(log π(y|x) − log π_ref(y|x)) is higher for chosen than for rejected, 0-100) and reward_margin (its mean difference).
"""

from __future__ import annotations

import copy

from bench.fields import PREFERENCE_ITEMS

# what the eval pairs' reward statistics are called in a record's quality.extra, and TRL's names for them
PREFERENCE_METRICS = {"preference_accuracy": "rewards/accuracies", "reward_margin": "rewards/margins"}


def example(sample) -> dict:
    """A sample as one of TRL's conversational vision preference examples (its image read now if it is a file)."""
    sample = sample.decoded()

    def said(role: str, text: str) -> list[dict]:
        return [{"role": role, "content": [{"type": "text", "text": text.strip()}]}]

    return {"image": sample.image,
            "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question.strip()}]}],
            "chosen": said("assistant", sample.answers[0]), "rejected": said("assistant", sample.rejected)}


class Dpo:
    """The task interface (bench/tasks/base.py) of a DPO cell: the family task's, with TRL's batches and loss."""

    def __init__(self, task, loaded, model, *, beta: float, seed: int, device: str, pairs: list, max_seq_len: int):
        from bench.tasks.captioning import image_token_id

        self.task, self.max_seq_len = task, max_seq_len
        self.trainer = _trainer(loaded, model, beta=beta, seed=seed, device=device, pairs=pairs)
        self.collator = self.trainer.data_collator
        self.image_token_id = image_token_id(loaded)

    def __getattr__(self, name: str):  # TASK, METRIC, HIGHER_IS_BETTER, SERVED, serving_request: the family task's
        if name == "task":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def encode(self, loaded, samples: list, settings) -> list[dict]:
        return [example(s) for s in samples]

    def collate(self, encoded: list[dict], loaded) -> dict:
        """TRL's batch of the pairs (chosen rows, then rejected), cut at max_seq_len text positions as SFT's are: the
        image tokens never cut, every row keeping some of its answer."""
        from bench.errors import DataError

        # TRL's collator rewrites the examples it is given: they are copied, their images shared (it only reads those)
        batch = self.collator(copy.deepcopy(encoded, memo={id(e["image"]): e["image"] for e in encoded}))
        ids = batch["input_ids"]
        images = int((ids == self.image_token_id).sum(1).max()) if self.image_token_id is not None else 0
        limit = images + self.max_seq_len
        if ids.shape[1] <= limit:
            return batch
        if images and bool((ids[:, limit:] == self.image_token_id).any()):
            raise DataError(f"max_seq_len = {self.max_seq_len} cuts into the image tokens", where="a preference batch",
                            fix="raise max_seq_len")
        cut = {k: v[:, :limit] if k in _SEQUENCES else v for k, v in batch.items()}
        if not bool(cut["completion_mask"].any(1).all()):
            raise DataError(f"an answer starts after max_seq_len = {self.max_seq_len} text tokens, so its pair has "
                            "nothing to compare", where="a preference batch", fix="raise max_seq_len")
        return cut

    def loss(self, model, batch: dict):
        return self.trainer.compute_loss(model, batch)

    @staticmethod
    def count_tokens(batch: dict) -> tuple[int, int]:
        """(real, padded) positions as captioning counts them: prompt and both answers, each pair twice as the model
        runs it."""
        from bench.tasks.captioning import count_tokens

        return count_tokens(batch)

    def evaluate(self, loaded, model, splits, settings):
        """The family task's quality, with TRL's reward statistics on the eval pairs in extra, and each pair's
        (`preference_items`: what the report's intervals resample, bench/analysis/intervals.py)."""
        quality = self.task.evaluate(loaded, model, splits, settings)
        per_pair: dict = {}
        quality.extra.update(self.preference(loaded, model, splits.eval, settings, per_pair=per_pair))
        if per_pair:
            quality.extra[PREFERENCE_ITEMS] = per_pair
        return quality

    def preference(self, loaded, model, samples: list, settings, per_pair: dict | None = None) -> dict:
        """preference_accuracy (0-100) and reward_margin over `samples`, by TRL's loss in eval mode. `per_pair` receives
        each pair's, in the order of `samples`: {"accuracy": [0 or 100, ...], "margin": [...]} (left empty where TRL's
        rewards could not be read back per pair)."""
        import torch

        metrics = self.trainer._metrics["eval"]
        totals, n = dict.fromkeys(PREFERENCE_METRICS, 0.0), 0
        pairs: dict[str, list] | None = {"accuracy": [], "margin": []} if per_pair is not None else None
        # TRL's loss hands each batch's per-pair rewards (chosen, then rejected) to accelerator.gather before it logs their
        # means: read them there, on the way through
        accelerator, gathered = self.trainer.accelerator, []
        own, gather = "gather" in vars(accelerator), accelerator.gather
        if pairs is not None:
            accelerator.gather = lambda tensor: gathered.append(tensor) or gather(tensor)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(samples), settings.eval_batch_size):
                    chunk = samples[start:start + settings.eval_batch_size]
                    batch = {k: v.to(settings.device) for k, v in self.collate(self.encode(loaded, chunk, settings),
                                                                                 loaded).items()}
                    gathered.clear()
                    self.trainer.compute_loss(model, batch)
                    for ours, theirs in PREFERENCE_METRICS.items():
                        totals[ours] += metrics[theirs][-1] * len(chunk)  # TRL logs each batch's mean
                    n += len(chunk)
                    if pairs is not None:
                        pairs = _per_pair(pairs, gathered, len(chunk), metrics)
        finally:
            if per_pair is not None:  # TRL's own gather back
                if own:
                    accelerator.gather = gather
                else:
                    del accelerator.gather
            model.train(was_training)
            metrics.clear()
        if pairs and per_pair is not None:
            per_pair.update(pairs)
        scale = {"preference_accuracy": 100.0, "reward_margin": 1.0}
        return {k: round(scale[k] * v / n, 6) for k, v in totals.items()} if n else {}


def _per_pair(pairs: dict | None, gathered: list, size: int, metrics: dict) -> dict | None:
    """`pairs` with one batch's pairs added: the chosen and rejected rewards, the first two per-pair tensors TRL gathered
    (its other figures are gathered as totals), their accuracy and margin checked against the means TRL logged (None,
    for good, when they are not those: TRL changed its order)."""
    rows = [t for t in gathered if getattr(t, "shape", None) == (size,)]
    if pairs is None or len(rows) < 2:
        return None
    chosen, rejected = (t.detach().float().cpu() for t in rows[:2])
    accuracy = ((chosen > rejected).float() * 100).tolist()
    margin = (chosen - rejected).tolist()
    logged = metrics["rewards/accuracies"][-1] * 100, metrics["rewards/margins"][-1]
    for values, mean in zip((accuracy, margin), logged):
        if abs(sum(values) / size - mean) > 1e-4 * max(1.0, abs(mean)):
            return None
    pairs["accuracy"] += [round(v, 1) for v in accuracy]
    pairs["margin"] += [round(v, 6) for v in margin]
    return pairs


# per-token rows of TRL's batch, cut together at max_seq_len
_SEQUENCES = ("input_ids", "attention_mask", "completion_mask", "token_type_ids", "mm_token_type_ids")


def _trainer(loaded, model, *, beta: float, seed: int, device: str, pairs: list):
    """TRL's DPOTrainer over the cell's model, for its collator, loss and reference: made once per cell, without
    touching the random streams bench seeds (TRL's set_seed would reseed them all, and importing it draws from
    Python's)."""
    import random
    import tempfile

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    # TRL casts a 4-bit model's trainable parameters to bf16 (its QLoRA recipe); bench keeps the cell's precision
    dtypes = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    reference = None
    if not hasattr(model, "peft_config"):  # full fine-tuning: TRL's reference is a frozen copy of the model
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    try:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        with tempfile.TemporaryDirectory(prefix="bench-dpo-") as scratch:  # the trainer writes nothing we use
            # precision is bench's (its loop's autocast covers the reference forward too): TRL's own bf16 default
            # would run the reference in bf16 beside an fp32 policy
            # gradient checkpointing is bench's too: TRL's default would hook the embeddings' outputs to require grad,
            # sending backward through frozen vision towers
            args = DPOConfig(output_dir=scratch, beta=beta, seed=seed, report_to="none", use_cpu=device == "cpu",
                             max_length=None, remove_unused_columns=False, save_strategy="no", bf16=False, fp16=False,
                             gradient_checkpointing=False)
            # the dataset TRL checks the columns of; bench's loop feeds the batches
            trainer = DPOTrainer(model=model, ref_model=reference, args=args,
                                 train_dataset=Dataset.from_list([example(pairs[0])]), processing_class=loaded.processor)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
    for name, p in model.named_parameters():
        if name in dtypes and p.dtype != dtypes[name]:
            p.data = p.data.to(dtypes[name])
    return trainer
