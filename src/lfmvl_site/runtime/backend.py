"""The host interface: everything the runtime needs from onnxruntime (native or web).

The runtime never imports onnxruntime or Pyodide's FFI; it talks to a
:class:`Backend`. Calls are awaitable because onnxruntime-web returns promises.

Values flow two ways through :meth:`Session.run`:

* names in ``read`` come back as numpy arrays (copied to host memory);
* names in ``keep`` come back as opaque handles that stay where the backend
  keeps them (GPU buffers on WebGPU) and may be fed straight back as inputs,
  e.g. the decoder's KV/conv caches. Free them with :meth:`Session.release`.

:meth:`Backend.run_chain` runs two graphs as one step (one graph's outputs feeding the other's inputs);
the default awaits :meth:`Session.run` twice, a backend may do it in one call. :meth:`Backend.run_greedy` runs
several plain greedy decode steps (token → embedding → decoder → in-graph ``next_token`` → next step) with a
synchronous per-token callback deciding when to stop; the default loops over :meth:`Backend.run_chain`, the
browser backend loops inside one JavaScript call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Dim = int | str | None


@dataclass(frozen=True)
class TensorInfo:
    """One graph input or output as the backend reports it."""

    name: str
    dtype: str  # numpy dtype name: "float32", "float16", "int64", "int32"
    shape: tuple[Dim, ...]  # ints for fixed dims, names (or None) for symbolic ones


class Session(ABC):
    """One loaded ONNX graph."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @abstractmethod
    async def run(
        self,
        feeds: Mapping[str, Any],
        *,
        read: Sequence[str],
        keep: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Run the graph. ``feeds`` values are numpy arrays or handles from ``keep``."""

    def release(self, values: Iterable[Any]) -> None:
        """Free handles returned through ``keep`` (no-op where memory is managed)."""

    async def close(self) -> None:
        """Free the session."""


class Backend(ABC):
    """Opens a model's graphs and files on one host."""

    name: str = "backend"

    @abstractmethod
    async def read_text(self, relpath: str) -> str:
        """Text of a model file, e.g. ``config.json``, relative to the model root."""

    @abstractmethod
    async def open_session(self, graph: str) -> Session:
        """Open one graph by role: ``embed_tokens``, ``embed_images`` or ``decoder``.

        Which file (precision variant, shards) serves a role is the host's
        business: a model directory's layout or the site's manifest.
        """

    async def run_chain(
        self,
        first: Session,
        first_feeds: Mapping[str, Any],
        second: Session,
        second_feeds: Mapping[str, Any],
        *,
        link: Mapping[str, str],
        read: Sequence[str],
        keep: Sequence[str] = (),
        free: Iterable[Any] = (),
    ) -> dict[str, Any]:
        """Run ``first``, then ``second`` fed with ``first``'s outputs: ``link`` maps an output of ``first`` to an
        input of ``second``. Returns ``second``'s outputs as :meth:`Session.run` does; the linked values are freed,
        and so are the handles in ``free`` (kept values of ``second``, e.g. the caches this run replaces) once
        ``second`` ran; if a run fails they stay the caller's.

        A decode step is one: embed_tokens' embedding goes straight into the decoder. This default awaits the two
        runs in turn (the linked values stay where the backend keeps them); a host where each awaited call costs
        (Pyodide: ~1 ms per JavaScript promise) does both inside one call.
        """
        mid = await first.run(first_feeds, read=[], keep=list(link))
        try:
            out = await second.run({**second_feeds, **{dst: mid[src] for src, dst in link.items()}}, read=read,
                                   keep=keep)
        finally:
            first.release(mid.values())
        second.release(free)
        return out

    async def run_greedy(
        self,
        first: Session,
        second: Session,
        token: int,
        caches: Mapping[str, Any],
        *,
        length: int,
        link: Mapping[str, str],
        present: Mapping[str, str],
        position_ids: bool,
        on_token: Callable[[int], bool],
        max_steps: int,
        read: str = "next_token",
    ) -> dict[str, Any]:
        """Plain greedy decode steps: up to ``max_steps`` runs of ``first`` (embed_tokens, fed ``input_ids``
        ``[[token]]``) chained into ``second`` (the decoder) as in :meth:`run_chain`, each fed back the token the
        previous one picked (its int64 ``read`` output, the in-graph argmax; its last element).

        ``caches`` maps the decoder's cache inputs to their values (kept handles or arrays) before the first step and
        ``present`` each of them to the output that carries it forward; ``length`` is the attention length of the
        first step (``attention_mask`` is ones ``[1, length]``, ``position_ids`` ``[[length - 1]]`` when
        ``position_ids``), one more per step. After each step ``on_token(token)`` is called (synchronously, between
        runs) with the step's token and returns True to stop there (EOS, enough tokens, a cancel: the caller's
        policy). Returns the last step's caches (cache input name → kept value), the caller's to release.

        The caches this replaces are freed as they are replaced, ``caches`` included, as ``run_chain``'s ``free``;
        if a run fails the ones made here are freed and ``caches`` stay the caller's (releasing them again after
        they were freed is a no-op). ``on_token`` should not raise: keep the exception and return True.

        This default is a plain loop over :meth:`run_chain`; a host where each awaited call costs (Pyodide) loops
        inside one call and calls back into Python per token.
        """
        current: dict[str, Any] = dict(caches)
        owned = False  # whether ``current`` was made here (else it is the caller's)
        keep = list(dict.fromkeys(present.values()))
        try:
            for _ in range(max_steps):
                feeds: dict[str, Any] = {"attention_mask": np.ones((1, length), dtype=np.int64), **current}
                if position_ids:
                    feeds["position_ids"] = np.asarray([[length - 1]], dtype=np.int64)
                out = await self.run_chain(first, {"input_ids": np.asarray([[token]], dtype=np.int64)}, second, feeds,
                                           link=link, read=[read], keep=keep, free=current.values())
                current, owned = {past: out[name] for past, name in present.items()}, True
                token = int(np.asarray(out[read]).reshape(-1)[-1])
                length += 1
                if on_token(token):
                    break
        except BaseException:
            if owned:
                second.release(current.values())
            raise
        return current

    def describe(self) -> str:
        """Plain words for the UI/CLI: which engine and device run the graphs."""
        return self.name
