"""GLM checkpoints (`glmaas train`) served in process by PyTorch, many requests sharing one batched
decode loop (`glm_batch.py`).

GLM generates by filling blanks. A prompt with `[MASK]`, `[sMASK]` or `[gMASK]` blanks in it has
all of them filled, in order, in one generation: each delta says which blank it fills
(`Delta.blank`). A prompt without one is continued left to right: `[gMASK]` is appended, as GLM
does for generation. Fill-in-the-middle is native: the prompt `prefix [MASK] suffix`.

Part A is what the model reads: `[CLS]` (as the reference prepends it to every sample; `cls=false`
leaves it out for checkpoints trained without it), the prompt, and the `[gMASK]` of a
continuation. Usage counts the prompt's tokens as the request gave them (what admission held
for; the `[CLS]`, `[gMASK]` and `[S]` the engine adds are its own) and, as completion tokens,
every token sampled, the `[E]` that closes each blank included. `max_tokens` bounds them over all blanks together; the
whole of Part A and Part B must fit the model's `max_seq_len`. A stop string ends the blank it
appears in (for a continuation, the generation).

Spec options (`--model ID=glm:CHECKPOINT_DIR,slots=8,threads=2,cls=true,device=cpu`):
  slots    sequences decoded together, each with its own KV cache slot (default 8)
  threads  PyTorch CPU threads (default: PyTorch's own choice; the setting is process-wide)
  cls      prepend `[CLS]` to Part A (default true)
  device   where the model and its cache live, a PyTorch device (default cpu)
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import torch

from glmaas.engines.base import (
    Delta,
    EngineError,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    PromptTooLong,
    Usage,
)
from glmaas.engines.decode_thread import followed
from glmaas.engines.glm_batch import GLMDecodeLoop, Sequence
from glmaas.engines.sampling import Sampler
from glmaas.model.glm_checkpoint import CONFIG, load_checkpoint
from glmaas.model.glm_tokenizer import SPECIAL_TOKENS

DEFAULT_SLOTS = 8
MARKS = ("[MASK]", "[sMASK]", "[gMASK]")
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint at `path`: the folder itself, or the `checkpoint/` of a `glmaas train --out`."""
    folder = Path(path).expanduser()
    if not (folder / CONFIG).is_file() and (folder / "checkpoint" / CONFIG).is_file():
        folder = folder / "checkpoint"
    return folder


class GLMEngine:
    """A GLM checkpoint served by a batched decode loop; see the module docstring."""

    def __init__(self, model_id: str, folder: Path, *, slots: int = DEFAULT_SLOTS, cls: bool = True,
                 threads: int | None = None, device: str = "cpu") -> None:
        if threads:
            torch.set_num_threads(threads)
        try:
            model, tokenizer, _ = load_checkpoint(folder, device)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise EngineError(f"model {model_id!r}: cannot load the GLM checkpoint at {folder}: {exc}") from None
        self._tokenizer = tokenizer
        self.special = tokenizer.special
        self._blank_ids = {self.special.mask, self.special.smask, self.special.gmask}
        self._bytes = tokenizer.token_bytes()
        self._cls = cls
        self.n_vocab = model.config.vocab_size
        self.slots = max(1, slots)
        self._loop = GLMDecodeLoop(model, self.special, self._bytes, self.slots)
        # No chat template: a GLM pretrained by blank infilling is served by /v1/completions.
        self.info = ModelInfo(model_id=model_id, context_length=model.config.max_seq_len, chat_template=None,
                              eos_token="<|endofpiece|>", vocab_size=self.n_vocab)

    @classmethod
    def from_spec(cls, model_id: str, folder: Path, options: dict[str, str]) -> GLMEngine:
        """Build from the options of `--model ID=glm:DIR,slots=8,threads=2,cls=true,device=cpu`."""
        unknown = set(options) - {"slots", "threads", "cls", "device"}
        if unknown:
            raise EngineError(f"model {model_id!r}: unknown glm options {sorted(unknown)}")
        flag = options.get("cls", "true").lower()
        if flag not in ("true", "false"):
            raise EngineError(f"model {model_id!r}: cls is true or false, got {flag!r}")
        try:
            slots = int(options.get("slots", DEFAULT_SLOTS))
            threads = int(options["threads"]) if "threads" in options else None
        except ValueError as exc:
            raise EngineError(f"model {model_id!r}: slots and threads are integers ({exc})") from None
        return cls(model_id, folder, slots=slots, cls=flag == "true", threads=threads,
                   device=options.get("device", "cpu"))

    # -- tokenizer ---------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of `text`. Special tokens (blank marks among them) are whole tokens, and a blank
        takes the space before it, as in training, where the span " Paris" was masked; with
        `special` false they are plain text."""
        if not special:
            ids: list[int] = []
            for part in _SPECIAL_RE.split(text):
                if part in SPECIAL_TOKENS:  # "[" and the rest apart: no special token can form
                    ids += self._tokenizer.encode(part[0]) + self._tokenizer.encode(part[1:])
                elif part:
                    ids += self._tokenizer.encode(part)
            return ids
        for mark in MARKS:
            text = text.replace(" " + mark, mark)
        return self._tokenizer.encode(text)

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of `token_ids`; blank marks render as their text, other special tokens as nothing."""
        marks = {self.special.mask: "[MASK]", self.special.smask: "[sMASK]", self.special.gmask: "[gMASK]"}
        out, run = [], bytearray()
        for t in token_ids:
            if t in marks:
                out.append(run.decode("utf-8", errors="replace") + marks[t])
                run = bytearray()
            elif 0 <= t < len(self._bytes):
                run += self._bytes[t]
        return "".join(out) + run.decode("utf-8", errors="replace")

    # -- blanks ------------------------------------------------------------------------------

    def blank_positions(self, prompt: list[int]) -> list[int]:
        """Indices of the blank marks in `prompt`; empty for a plain continuation."""
        return [i for i, t in enumerate(prompt) if t in self._blank_ids]

    def infill_prompt(self, prefix: list[int], suffix: list[int]) -> list[int]:
        """`prefix [MASK] suffix`; a lone space ending the prefix goes into the blank, as in training."""
        if prefix and self._bytes[prefix[-1]] == b" ":
            prefix = prefix[:-1]
        return [*prefix, self.special.mask, *suffix]

    def part_a(self, prompt: list[int]) -> tuple[list[int], list[int]]:
        """Part A of a prompt and the positions of its blanks in it."""
        part_a = ([self.special.cls] if self._cls and prompt[:1] != [self.special.cls] else []) + prompt
        blanks = self.blank_positions(part_a)
        if not blanks:
            part_a.append(self.special.gmask)
            blanks = [len(part_a) - 1]
        return part_a, blanks

    # -- generation --------------------------------------------------------------------------

    def active_sequences(self) -> int:
        """Requests holding a slot or waiting for one (for tests and metrics)."""
        return self._loop.active_sequences()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Fill the prompt's blanks (or continue it); see `Engine.generate` and the module docstring."""
        prompt = list(request.prompt_token_ids)
        if prompt and (min(prompt) < 0 or max(prompt) >= self.n_vocab):
            raise InvalidRequest(f"the prompt holds token ids outside the vocabulary of {self.n_vocab}")
        params = request.sampling
        if params.constraint is not None:
            raise InvalidRequest(f"the model {self.info.model_id} cannot constrain its output")
        if params.logit_bias and not all(0 <= t < self.n_vocab for t in params.logit_bias):
            raise InvalidRequest(f"logit_bias names token ids outside the vocabulary of {self.n_vocab}")
        part_a, blanks = self.part_a(prompt)
        max_len = self.info.context_length
        if len(part_a) + 1 > max_len:  # Part A, then at least the [S] of the first blank
            raise PromptTooLong(f"the prompt takes {len(part_a)} of the {max_len} positions of "
                                f"{self.info.model_id}, leaving no room to generate")
        if params.max_tokens <= 0:
            yield Delta(finish_reason="length", usage=Usage(len(prompt), 0))
            return
        queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        seq = Sequence(request_id=request.request_id, n_prompt=len(prompt), part_a=part_a, blanks=blanks,
                       max_new=params.max_tokens, sampler=Sampler(params, part_a), stops=params.stop,
                       loop=asyncio.get_running_loop(), queue=queue)
        async for delta in followed(self._loop, seq, queue):
            yield delta

    async def close(self) -> None:
        """Stop the decode loop."""
        await asyncio.to_thread(self._loop.close)
