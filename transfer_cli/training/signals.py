"""Stop requests: SIGTERM (Slurm, kill), SIGINT (Ctrl-C) and SIGUSR2 (submitit, before a time limit).

While the loop trains, a signal only asks it to stop: the loop checkpoints at the next batch and raises
`Interrupted`. Outside the loop (data, model) and on a second signal, `Interrupted` is raised at once. Where a
launcher already handles a signal (submitit requeues on SIGUSR2), the loop checkpoints first and then hands the
signal to that handler; if the handler returns, training goes on.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable, Dict, Optional

SIGNALS = tuple(s for s in (signal.SIGTERM, signal.SIGINT, getattr(signal, "SIGUSR2", None)) if s is not None)


class Interrupted(BaseException):
    """The run stopped on a signal; the process exits with 128 + its number."""

    def __init__(self, signum: int, checkpointed: bool = False, exit_code: Optional[int] = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.checkpointed = signum, checkpointed
        self.exit_code = 128 + signum if exit_code is None else exit_code


class StopSignals:
    """Installs the handlers for the duration of a run (main thread only)."""

    def __init__(self):
        self.requested: Optional[int] = None
        self.deferring = False  # True while the loop can checkpoint at its next batch
        self._previous: Dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.deferring and self.requested is None:
            self.requested = signum
            return
        raise Interrupted(signum)

    @contextmanager
    def installed(self):
        for signum in SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (a launcher's worker thread): no handlers
                break
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous.clear()

    @contextmanager
    def deferred(self):
        """Within this block a first signal waits for `pending()`."""
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False

    def pending(self, accelerator) -> Optional[int]:
        """The signal that asks to stop, agreed by every process (each checks at the same batch)."""
        signum = self.requested or 0
        if accelerator.num_processes > 1:
            import torch

            signum = int(accelerator.reduce(torch.tensor([signum], device=accelerator.device), "max").item())
        return signum or None

    def launcher_handler(self, signum: int) -> Optional[Callable]:
        """A handler that was installed before ours by a launcher (submitit), if any."""
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            return previous
        return None

    def stop(self, signum: int, checkpointed: bool) -> None:
        """After the checkpoint: hand the signal to a launcher's handler (it may requeue and exit), else stop."""
        self.requested = None
        handler = self.launcher_handler(signum)
        if handler is not None:
            try:
                handler(signum, None)
            except SystemExit as e:  # the launcher ends the process (submitit, once it has requeued the job)
                raise Interrupted(signum, checkpointed, e.code if isinstance(e.code, int) else 1) from None
            return  # the launcher chose to go on (submitit ignores SIGTERM and waits for SIGUSR2)
        raise Interrupted(signum, checkpointed)
