"""LLaVA's task: supervised fine-tuning on conversations about an image, scored by VQA accuracy.

A conversation is written in LLaVA-1.5's format,

    USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: {question 2} ASSISTANT: {answer 2}</s>

and LlavaProcessor expands `<image>` into one image token per patch feature. Only the assistant
answers (and their </s>) are learned: the image tokens and the user turns get label -100. The
answer spans are found by the token lengths of the encoded conversation up to each boundary
(bench's tiny tokenizer maps USER/ASSISTANT/newline to <unk> or nothing, so a marker search
would be fragile), and every such prefix is checked to be where the full encoding begins.

Evaluation generates an answer for each eval question from the prompt "USER: <image>\\n{question}
ASSISTANT:", left-padded, and scores it with the official VQA accuracy.
"""

from __future__ import annotations

from bench.data.sample import DatasetSplits, Sample
from bench.errors import DataError
from bench.tasks.base import Quality, TaskSettings
from bench.tasks.captioning import (
    EXAMPLES,
    IGNORE,
    SERVED,  # noqa: F401 - generated tokens, as captioning
    check_prefix,
    collate,  # noqa: F401 - the same padded batch as captioning: part of this module's task interface
    count_tokens,  # noqa: F401 - likewise
    generate_texts,
    image_token_id,
    loss,  # noqa: F401 - likewise: the model's own loss over the unmasked labels
)
from bench.tasks.captioning import serving_request as captioning_request

TASK = "vqa"
METRIC = "vqa_acc"  # the headline where every eval question has FULL_CREDIT_ANSWERS answers or more
HIGHER_IS_BETTER = True
# the official VQA accuracy gives full credit when three other annotators agree: a question needs four answers for it,
# and one with a single answer always scores 0. Data with fewer (a single-answer set) is headlined by exact match
FULL_CREDIT_ANSWERS = 4

IMAGE = "<image>"


def user_text(question: str, first: bool) -> str:
    """One user turn up to the point where the assistant starts; the image goes in the first turn only."""
    return f"USER: {IMAGE}\n{question.strip()} ASSISTANT:" if first else f"USER: {question.strip()} ASSISTANT:"


def assistant_text(answer: str, eos: str) -> str:
    return f" {answer.strip()}{eos}"


def prompt(question: str) -> str:
    """The evaluation prompt: one user turn, the answer left to the model."""
    return user_text(question, first=True)


def training_turns(sample: Sample, index: int) -> tuple[tuple[str, str], ...]:
    """The sample's conversation, or its question with the first answer as a one-turn conversation."""
    turns = sample.turns
    if not turns and sample.question and sample.answers:
        turns = ((sample.question, sample.answers[0]),)
    if not turns:
        raise DataError("a VQA training sample needs `turns`, or a question with at least one answer",
                        where=f"train[{index}]", fix="give every training sample a conversation or a question and answers")
    for t, (user, assistant) in enumerate(turns):
        if not (user or "").strip() or not (assistant or "").strip():
            raise DataError("every turn needs a non-empty user text and assistant answer",
                            where=f"train[{index}].turns[{t}]", fix="drop empty turns from the conversation")
    return turns


def conversation(sample: Sample, index: int, eos: str) -> list[tuple[str, bool]]:
    """The training conversation's text as (segment, learned?) in order: user turns, then answers with their eos."""
    segments = []
    for t, (user, assistant) in enumerate(training_turns(sample, index)):
        segments += [(user_text(user, first=t == 0), False), (assistant_text(assistant, eos), True)]
    return segments


def truncated(loaded, samples: list[Sample], settings: TaskSettings) -> list[bool | None]:
    """Per training sample, whether encode cuts its conversation at max_seq_len (None: encode refuses the sample), from
    the text alone, no image read: encode keeps max_seq_len tokens besides the image tokens, which the processor makes
    of the `<image>` placeholder, and the conversation ends in an answer's eos, so any cut cuts an answer."""
    tokenizer = loaded.processor.tokenizer
    eos = tokenizer.eos_token or ""
    image_id = image_token_id(loaded)
    out = []
    for i, s in enumerate(samples):
        try:
            text = "".join(seg for seg, _ in conversation(s, i, eos))
        except DataError:
            out.append(None)
            continue
        ids = tokenizer(text)["input_ids"]
        out.append(sum(t != image_id for t in ids) > settings.max_seq_len)
    return out


def encode(loaded, samples: list[Sample], settings: TaskSettings) -> list[dict]:
    """Per-sample CPU tensors: pixel values, the conversation's input ids, and labels on the answers only."""
    processor = loaded.processor
    tokenizer = processor.tokenizer
    eos = tokenizer.eos_token or ""
    image_id = image_token_id(loaded)
    out = []
    for i, s in enumerate(samples):
        segments = conversation(s, i, eos)
        enc = processor(images=[s.image], text=["".join(seg for seg, _ in segments)], return_tensors="pt")
        ids = enc["input_ids"][0][enc["attention_mask"][0].bool()]
        image_positions = (ids == image_id).nonzero().flatten()
        labels = ids.new_full(ids.shape, IGNORE)
        start, text = 0, ""
        for segment, learned in segments:
            text += segment
            prefix = _text_ids(tokenizer, text, len(image_positions))
            check_prefix(ids, prefix, where=f"train[{i}]")
            if learned:
                labels[start:len(prefix)] = ids[start:len(prefix)]
            start = len(prefix)
        limit = len(image_positions) + settings.max_seq_len  # max_seq_len counts text tokens only
        if len(image_positions) and limit <= int(image_positions[-1]):
            raise DataError(f"max_seq_len = {settings.max_seq_len} cuts into the image tokens", where=f"train[{i}]",
                            fix="raise max_seq_len")
        ids, labels = ids[:limit], labels[:limit]
        if not bool((labels != IGNORE).any()):
            raise DataError(f"the first answer starts after max_seq_len = {settings.max_seq_len} text tokens, so "
                            "the sample has nothing to learn", where=f"train[{i}]", fix="raise max_seq_len")
        out.append({"pixel_values": enc["pixel_values"][0], "input_ids": ids, "labels": labels})
    return out


def evaluate(loaded, model, splits: DatasetSplits, settings: TaskSettings) -> Quality:
    """VQA accuracy (0-100) of answers generated for the eval questions in LLaVA's prompt format (see answer_quality)."""
    return answer_quality(loaded, model, splits, settings, lambda s: prompt(s.question))


def answer_quality(loaded, model, splits: DatasetSplits, settings: TaskSettings, prompt_of) -> Quality:
    """Short answers generated for the eval questions (each prompted with prompt_of(sample)), scored by the data's own
    answer metric when it names one (ChartQA's relaxed accuracy), else VQA accuracy, or exact match on data with fewer
    than FULL_CREDIT_ANSWERS answers to some question; the other scores in extra. Shared with bench/tasks/chat.py."""
    from bench.metrics import exact_match, relaxed_answer_score, vqa_answer_score

    answers = []
    for i, s in enumerate(splits.eval):
        if not (s.question or "").strip() or not s.answers:
            raise DataError("a VQA eval sample needs a question and at least one reference answer",
                            where=f"eval[{i}]", fix="give every eval sample `question` and `answers`")
        answers.append(list(s.answers))
    generated = generate_texts(loaded, model, splits.eval, prompt_of, settings)
    predictions = [text for _, text in generated]
    answers = [answers[i] for i, _ in generated]  # a skipped unreadable sample is left out of the score
    per_item = {"vqa_acc": [100 * vqa_answer_score(p, a) for p, a in zip(predictions, answers)],
                "exact_match": [exact_match([p], [a]) for p, a in zip(predictions, answers)],
                "relaxed_accuracy": [100 * relaxed_answer_score(p, a) for p, a in zip(predictions, answers)]}
    scores = {name: sum(values) / len(values) if values else 0.0 for name, values in per_item.items()}
    metric = splits.answer_metric or headline(answers)
    extra = {k: v for k, v in scores.items() if k != metric}
    extra["examples"] = [{"question": splits.eval[i].question, "prediction": p, "answers": list(splits.eval[i].answers)}
                         for i, p in generated[:EXAMPLES]]
    return Quality(metric=metric, value=float(scores[metric]), higher_is_better=HIGHER_IS_BETTER, extra=extra,
                   n=len(predictions), items=per_item[metric], item_ids=[i for i, _ in generated])


def serving_request(loaded, samples: list, settings: TaskSettings, device: str):
    """Answers of exactly max_new_tokens to the samples' questions (captioning's request with this task's prompt)."""
    return captioning_request(loaded, samples, settings, device, prompt_of=lambda s: prompt(s.question))


def headline(answers: list[list[str]]) -> str:
    """vqa_acc where every question can earn full credit, exact_match otherwise."""
    return METRIC if all(len(a) >= FULL_CREDIT_ANSWERS for a in answers) else "exact_match"


def _text_ids(tokenizer, text: str, n_image: int):
    """Token ids of `text` as the processor would make them, with `<image>` expanded to `n_image` image tokens."""
    import torch

    expanded = text.replace(IMAGE, IMAGE * n_image) if n_image else text
    return torch.tensor(tokenizer(expanded)["input_ids"], dtype=torch.long)
