"""The thinking phase of Cohere's cmd3 / reasoning templates (spec 3.1, 3.5): which templates have one, their on/off
switch, and `--think-budget`'s forced end of thinking in the local generation loop.

* A template has a thinking phase when it writes `<|START_THINKING|>`: R7B / Command A (the plan before a tool call
  or a grounded answer), and the reasoning templates (Command A Reasoning, the 2026 `Cohere2MoE` template), whose
  generation prompt opens `<|START_THINKING|>` for the model to think first.
* Its switch is a template variable read bare (not `message.reasoning`): `reasoning` in Cohere's reasoning templates
  (`reasoning=False` renders `<|START_THINKING|><|END_THINKING|>`: thinking skipped), `enable_thinking` elsewhere.
  `--think/--no-think` set it; without either the template's own default holds.
* `ThinkBudget`: after N tokens inside thinking (counted over the whole answer), the next input tokens are forced:
  `<|END_THINKING|>` and, when no tool may be called, the token the template opens an answer with
  (`<|START_TEXT|>` in the reasoning templates, `<|START_RESPONSE|>` in cmd3). Forced, not sampled: the model reads
  them as its own and goes on from there."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cohere_cli.engine.toolcalls import END_THINKING, START_RESPONSE, START_TEXT, START_THINKING

SWITCHES = ("reasoning", "enable_thinking")
_TAG = re.compile(r"{[{%](.*?)[}%]}", re.S)  # inside Jinja tags only: cmd3's prose says "advanced reasoning"
_SWITCH = re.compile(r"(?<![.\w'\"])(" + "|".join(SWITCHES) + r")\b(?!\s*=[^=])")


def template_source(templates: dict[str, str], name: str | None) -> str:
    """The text of the template `name` renders with (None: the default, or the only one), "" when there is none."""
    if name is not None or "default" in templates:
        return templates.get(name or "default", "")
    return next(iter(templates.values())) if len(templates) == 1 else ""


def has_thinking(source: str) -> bool:
    """Whether a template has a thinking phase (writes `<|START_THINKING|>`)."""
    return START_THINKING in source


def think_switch(source: str) -> str | None:
    """The template variable that turns thinking on or off (`reasoning`, `enable_thinking`), or None."""
    if has_thinking(source):
        for tag in _TAG.finditer(source):
            if found := _SWITCH.search(tag.group(1)):
                return found.group(1)
    return None


def answer_start(sources: Iterable[str]) -> str:
    """The marker that opens an answer after thinking: `<|START_TEXT|>` in the reasoning templates, else cmd3's
    `<|START_RESPONSE|>`."""
    return START_TEXT if any(START_TEXT in s for s in sources) else START_RESPONSE


@dataclass
class ThinkBudget:
    """The forced end of thinking for one answer: `next(sample)` gives the token to feed next, the sampled one or a
    forced one, and follows the thinking phase by token id. `inside`: the prompt ends inside thinking."""

    budget: int
    start_id: int
    end_id: int
    after: list[int] = field(default_factory=list)  # forced after <|END_THINKING|>
    inside: bool = False
    count: int = 0  # thinking tokens so far
    cut: bool = False  # the budget ended a thinking phase
    _queue: list[int] = field(default_factory=list)

    def next(self, sample: Callable[[], int]) -> int:
        if not self._queue and self.inside and self.count >= self.budget:
            self._queue, self.cut = [self.end_id, *self.after], True
        token = self._queue.pop(0) if self._queue else sample()
        if token == self.start_id and not self.inside:
            self.inside = True
        elif token == self.end_id:
            self.inside = False
        elif self.inside:
            self.count += 1
        return token


def think_budget(tok, budget: int | None, prompt_ids: list[int], tools: bool) -> ThinkBudget | None:
    """The ThinkBudget for an answer to `prompt_ids`, or None (no budget, or no thinking tokens in the vocabulary)."""
    if budget is None:
        return None
    start, end = tok.token_to_id(START_THINKING), tok.token_to_id(END_THINKING)
    if start is None or end is None:
        return None
    after = [] if tools else [tok.token_to_id(answer_start(tok.chat_templates.values()))]
    return ThinkBudget(budget, start, end, [i for i in after if i is not None],
                       inside=bool(prompt_ids) and prompt_ids[-1] == start)
