"""Step detection on token ids: the SPEC §2 text rule lifted to a token-level automaton.

The text rule counts `(?<![A-Za-z])T(?![A-Za-z])` for each trigger T. For triggers made of ASCII
letters that is: count the maximal runs of ASCII letters that spell a trigger. An automaton over
characters decides it with these states: OUT (at the start, or after a non-letter), DEAD (inside a
letter run that is no trigger prefix) and one state per non-empty trigger prefix. A run that spells
a whole trigger is a *pending* match: the next character confirms it if it is not a letter (the end
of the text confirms it too). The rule first squeezes whitespace around `<`, `>`, `/`; that only
swaps one non-letter neighbour of a run for another, so it never changes the count here.

The automaton is lifted to tokens once, from every token's decoded string, into one table
`[state, token]`: a single gather per sampled token updates a row. Byte-level tokens that split a
UTF-8 character decode to U+FFFD, a non-letter like the character itself, so splits are exact too.
Besides the next state and the number of confirmed matches, the table says where matches start,
which the sampler needs for the DTR boundary: the first token of a trigger occurrence.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # Importing transformers costs seconds; only its type is used here.
    from transformers import PreTrainedTokenizerBase

OUT, DEAD = 0, 1  # The other states are trigger prefixes, numbered from 2.

# Packing of one table entry (int32): the next state, then the confirmed count, then two flags.
_COUNT_SHIFT, _STARTS_BIT, _FIRST_BIT = 12, 1 << 24, 1 << 25
_LEADING_LETTERS = re.compile(r"[A-Za-z]*")
_WORD = re.compile(r"[A-Za-z]+")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TriggerTables:
    """Device tables of the trigger automaton over a vocabulary (build once per tokenizer).

    An entry of `table[s, v]` packs (see `lookup`): the state after token v's string from state s,
    how many trigger occurrences v's characters confirm, whether a pending or partial occurrence
    at the end of v began inside v (`starts`), and whether the first occurrence v confirms began
    inside v (`first_here`).
    """

    table: jax.Array  # [Q, V] int32
    pending: jax.Array  # [Q] bool: a whole trigger awaits its confirming character
    triggers: tuple[str, ...] = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def from_strings(cls, strings: Sequence[str], triggers: Sequence[str]) -> TriggerTables:
        """Tables for a vocabulary given as each token's decoded string (index = token id)."""
        table, pending = _build(list(strings), _check(triggers))
        return cls(jnp.asarray(table), jnp.asarray(pending), tuple(triggers))

    @classmethod
    def from_tokenizer(cls, tok: PreTrainedTokenizerBase, triggers: Sequence[str],
                       vocab_size: int) -> TriggerTables:
        """Tables for a tokenizer; ids past its vocabulary (the model's padded embedding rows)
        decode to nothing, as `tok.decode` does. Special tokens decode to their text."""
        n = min(len(tok), vocab_size)
        strings = tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                   clean_up_tokenization_spaces=False)
        return cls.from_strings(strings + [""] * (vocab_size - n), triggers)

    def lookup(self, state: jax.Array, token: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """(next state, confirmed count, starts, first_here) for per-row states and tokens."""
        e = self.table[state, token]
        return (e & ((1 << _COUNT_SHIFT) - 1), (e >> _COUNT_SHIFT) & 0xFFF,
                (e & _STARTS_BIT) != 0, (e & _FIRST_BIT) != 0)


def _check(triggers: Sequence[str]) -> tuple[str, ...]:
    if not triggers or not all(re.fullmatch(r"[A-Za-z]+", t) for t in triggers):
        raise ValueError(f"triggers={tuple(triggers)!r}: need at least one, each a word of "
                         "ASCII letters (the sampler's automaton matches whole words)")
    return tuple(triggers)


def _build(strings: list[str], triggers: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    prefixes = sorted({t[:i] for t in triggers for i in range(1, len(t) + 1)})
    state_of = {p: 2 + i for i, p in enumerate(prefixes)}
    num_states = 2 + len(prefixes)
    if num_states > 1 << _COUNT_SHIFT:
        raise ValueError(f"triggers {triggers} need {num_states} automaton states, too many")
    run = [None, None, *prefixes]  # The letters of the current run, per state (None: no prefix).
    pending = np.array([s >= 2 and run[s] in triggers for s in range(num_states)])

    def walk(s: int, letters: str) -> int:
        """The state after a run of letters (no separator in between)."""
        if not letters:
            return s
        if s == DEAD:
            return DEAD
        return state_of.get((run[s] or "") + letters, DEAD)

    table = np.zeros((num_states, len(strings)), np.int32)
    for v, text in enumerate(strings):
        lead = _LEADING_LETTERS.match(text).group()
        rest = text[len(lead):]
        if rest:  # A separator follows the leading letters: the runs inside `rest` stand alone.
            words = _WORD.findall(rest)
            tail = words.pop() if rest[-1].isascii() and rest[-1].isalpha() else ""
            inner = sum(w in triggers for w in words)
            tail_state = walk(OUT, tail)
        for s in range(num_states):
            after_lead = walk(s, lead)
            if not rest:
                nxt, count = after_lead, 0
                starts = s == OUT and after_lead >= 2
                first = False
            else:
                closed = int(pending[after_lead])
                nxt, count = tail_state, closed + inner
                starts = tail_state >= 2
                # The first confirmed occurrence began here unless it is the run carried in.
                first = count > 0 and (not closed or s == OUT)
            table[s, v] = (nxt | count << _COUNT_SHIFT | (_STARTS_BIT if starts else 0)
                           | (_FIRST_BIT if first else 0))
    return table, pending
