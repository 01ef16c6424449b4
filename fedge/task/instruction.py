"""Instruction tuning with a causal LM: the loss on the assistant's tokens, and greedy answers scored for evaluation.

Conversations are rendered with the tokenizer's chat template (a plain ``Role: text`` template where it has none).
A template that adds its own default system prompt where a conversation has none (SmolLM2's: 22 tokens) gets an
empty system message instead, so the default does not eat every conversation's token budget; ``task.prompt`` sets
a system message of the operator's own. Each assistant turn's text is the span between the template rendered up to the turn with its generation prompt and
rendered through the turn, so it includes the end-of-turn marker the model must learn to stop with; only those
tokens carry loss. The full-vocabulary output layer runs on the answer positions alone, in chunks whose logits are
recomputed during backward, so its memory is one chunk's logits whatever the batch (``fedge.profiles.memory`` counts it).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from fedge.task.classifier import Evaluation, pad_rows
from fedge.task.data import Dialogue
from fedge.task.instruct import score
from fedge.task.next_token import IGNORE, target_losses
from fedge.task.prefix import EncodedRows, FrozenPrefix, PrefixCache
from fedge.wire import TaskSpec

PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}"
    "{% if message['role'] == 'assistant' and eos_token %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
log = logging.getLogger(__name__)


@dataclass
class EncodedDialogues(EncodedRows):
    targets: torch.Tensor  # (n, t): the token each position predicts next where that token is an answer's, else IGNORE
    prompts: list[list[int]]  # each conversation up to its last answer, ending with the generation prompt
    references: list[str]  # each conversation's last answer

    def to(self, device: str | torch.device) -> EncodedDialogues:
        return EncodedDialogues(self.input_ids.to(device), self.lengths.to(device), self.targets.to(device), self.prompts, self.references)


@dataclass(frozen=True)
class TemplateCost:
    """What the chat template adds to a one-exchange conversation, in tokens, and the default system prompt it would
    have added (dropped) where the conversation has no system message."""

    added_tokens: int
    dropped_system_tokens: int

    def describe(self) -> str:
        dropped = f"; its default system prompt ({self.dropped_system_tokens} tokens) is dropped, task.prompt sets one" if self.dropped_system_tokens else ""
        return f"the chat template adds {self.added_tokens} tokens to a one-exchange conversation{dropped}"


def _template(tokenizer) -> str | None:
    return None if tokenizer.chat_template else PLAIN_TEMPLATE


def _token_count(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.encode(tokenizer.apply_chat_template(messages, chat_template=_template(tokenizer), tokenize=False), add_special_tokens=False))


def template_cost(tokenizer, system: str) -> TemplateCost:
    """The template's tokens around a probe exchange, with the system message ``render`` would give it."""
    exchange = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    contents = sum(len(tokenizer.encode(text, add_special_tokens=False)) for text in ("x", "y"))
    opening = system_message(tokenizer, system)
    default = _token_count(tokenizer, exchange) - _token_count(tokenizer, [{"role": "system", "content": ""}, *exchange]) if opening == {"role": "system", "content": ""} else 0
    return TemplateCost(_token_count(tokenizer, ([opening] if opening else []) + exchange) - contents, default)


def system_message(tokenizer, system: str) -> dict | None:
    """The system message to open conversations that have none: the task's prompt; else an empty one where the
    template would put a longer default of its own there; else none."""
    if system:
        return {"role": "system", "content": system}
    exchange = [{"role": "user", "content": "x"}]
    if _token_count(tokenizer, exchange) > _token_count(tokenizer, [{"role": "system", "content": ""}, *exchange]):
        return {"role": "system", "content": ""}
    return None


def render(tokenizer, dialogue: Dialogue, system: str, opening: dict | None = None) -> tuple[list[int], list[bool], list[int]]:
    """(token ids, which of them belong to an answer, the prompt before the last answer) of one conversation;
    ``opening`` is ``system_message(tokenizer, system)`` where the caller has it already."""
    messages = [{"role": role, "content": content} for role, content in dialogue.messages]
    opening = opening if opening is not None else system_message(tokenizer, system)
    if opening and messages[0]["role"] != "system":
        messages.insert(0, opening)
    template = _template(tokenizer)

    def text(upto: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages[:upto], chat_template=template, tokenize=False, add_generation_prompt=generation_prompt)

    full = text(len(messages), False)
    ids: list[int] = []
    answer: list[bool] = []
    done = 0  # characters of ``full`` already tokenized
    prompt: list[int] = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        through = text(index + 1, False)
        start, end = len(text(index, True)), len(through)
        if not full.startswith(through) or start > end:
            raise ValueError(f"line {dialogue.line}: the chat template does not render a conversation as a prefix of its continuation")
        before = tokenizer.encode(full[done:start], add_special_tokens=False)
        ids += before
        answer += [False] * len(before)
        prompt = list(ids)
        reply = tokenizer.encode(full[start:end], add_special_tokens=False)
        ids += reply
        answer += [True] * len(reply)
        done = end
    return ids, answer, prompt


def encode(tokenizer, dialogues: list[Dialogue], task: TaskSpec) -> EncodedDialogues:
    """Conversations cut to the task's token budget; a conversation with no answer token inside it is left out."""
    rows, targets, prompts, references = [], [], [], []
    opening = system_message(tokenizer, task.prompt)
    for dialogue in dialogues:
        ids, answer, prompt = render(tokenizer, dialogue, task.prompt, opening)
        ids, answer = ids[: task.max_tokens], answer[: task.max_tokens]
        if not any(answer[1:]):
            continue
        rows.append(ids)
        targets.append([ids[position + 1] if answer[position + 1] else IGNORE for position in range(len(ids) - 1)] + [IGNORE])
        prompts.append(prompt[-task.max_tokens :])
        references.append(dialogue.messages[-1][1])
    if len(rows) < len(dialogues):
        log.warning("%d of %d conversations have no answer within task.max_tokens %d and are left out (%s)", len(dialogues) - len(rows), len(dialogues), task.max_tokens,
                    template_cost(tokenizer, task.prompt).describe())
    if not rows:
        raise ValueError(f"no conversation has an answer within task.max_tokens {task.max_tokens} ({template_cost(tokenizer, task.prompt).describe()})")
    input_ids, lengths = pad_rows(rows, tokenizer)
    target_ids = torch.full_like(input_ids, IGNORE)
    for index, row in enumerate(targets):
        target_ids[index, : len(row)] = torch.tensor(row)
    return EncodedDialogues(input_ids, lengths, target_ids, prompts, references)


class InstructionTuner:
    """The loss over answer tokens from the adapted top of a split model, and evaluation by loss and answers."""

    def __init__(self, runner: FrozenPrefix, tokenizer, spec: TaskSpec):
        self.runner = runner
        self.model = runner.model
        self.tokenizer = tokenizer
        self.spec = spec

    def encode(self, dialogues: list[Dialogue]) -> EncodedDialogues:
        return encode(self.tokenizer, dialogues, self.spec)

    def token_losses(self, cache: PrefixCache, rows: torch.Tensor) -> torch.Tensor:
        """The cross-entropy of every answer token of ``rows``, one value per token."""
        hidden = self.runner.top(cache.batch(rows))
        return target_losses(hidden, cache.data.targets[rows, : hidden.shape[1]], self.runner.decoder.output)

    def loss(self, cache: PrefixCache, rows: torch.Tensor) -> torch.Tensor:
        return self.token_losses(cache, rows).mean()

    @torch.no_grad()
    def evaluate(self, cache: PrefixCache, batch_size: int = 16) -> Evaluation:
        was_training = self.model.training
        self.model.eval()
        total, tokens = 0.0, 0
        for begin in range(0, len(cache), batch_size):
            losses = self.token_losses(cache, torch.arange(begin, min(begin + batch_size, len(cache))))
            total += losses.float().sum().item()
            tokens += len(losses)
        data: EncodedDialogues = cache.data
        count = min(self.spec.eval_samples, len(data.prompts))
        answers = self.answer(data.prompts[:count])
        self.model.train(was_training)
        scores = [score(self.spec.metric, said, wanted) for said, wanted in zip(answers, data.references)]
        loss = total / max(tokens, 1)
        return Evaluation(accuracy=sum(scores) / len(scores), loss=loss, metric=self.spec.metric, perplexity=math.exp(min(loss, 50.0)))

    def answer(self, prompts: list[list[int]], batch_size: int = 8) -> list[str]:
        """Greedy answers of at most ``max_new_tokens`` tokens to token-id prompts."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        device = self.runner.decoder.output.weight.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        answers = []
        for begin in range(0, len(prompts), batch_size):
            batch = prompts[begin : begin + batch_size]
            width = max(len(prompt) for prompt in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for index, prompt in enumerate(batch):  # left-padded, so every answer starts at the same column
                input_ids[index, width - len(prompt) :] = torch.tensor(prompt)
                mask[index, width - len(prompt) :] = 1
            out = base.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), max_new_tokens=self.spec.max_new_tokens, do_sample=False, pad_token_id=pad)
            answers += [self.tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in out.cpu()]
        return answers


def tuner_for(runner: FrozenPrefix, tokenizer, spec: TaskSpec) -> InstructionTuner:
    return InstructionTuner(runner, tokenizer, spec)
