"""The training data position: the next micro-batch, crossing epochs, as a stateful part of checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from vfm.errors import DataError


class TrainData:
    """Micro-batches from a map-style loader whose batch sampler resumes at `(epoch, batches_done)`."""

    def __init__(self, loader: DataLoader) -> None:
        sampler = loader.batch_sampler
        if not callable(getattr(sampler, "set_epoch", None)):
            raise DataError(f"data.sampler: {type(sampler).__name__} has no set_epoch(epoch, batches_done); "
                            "training loaders need a resumable batch sampler")
        self.loader = loader
        self.epoch, self.batch_in_epoch = 0, 0  # micro-batches consumed in the current epoch
        self._batches: Iterator[Any] | None = None

    def batches_per_epoch(self) -> int | None:
        """Micro-batches in one epoch (None for a stream of unknown length)."""
        return len(self.loader.batch_sampler)

    def _start_iterator(self) -> Iterator[Any]:
        """An iterator over the rest of the current epoch, from the saved position."""
        self.loader.batch_sampler.set_epoch(self.epoch, self.batch_in_epoch)
        return iter(self.loader)

    def next_batch(self) -> Any:
        """The next micro-batch; starts the next epoch when one ends."""
        while True:
            if self._batches is None:
                self._batches = self._start_iterator()
            try:
                batch = next(self._batches)
            except StopIteration:
                self.epoch, self.batch_in_epoch, self._batches = self.epoch + 1, 0, None
                continue
            self.batch_in_epoch += 1
            return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position of this rank."""
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at a saved position (the next `next_batch` restarts the iterator there)."""
        self.epoch, self.batch_in_epoch, self._batches = state["epoch"], state["batch_in_epoch"], None


class StreamTrainData(TrainData):
    """Micro-batches from a stream through torchdata's StatefulDataLoader; each worker's position is saved."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.epoch, self.batch_in_epoch = 0, 0
        self._batches = None
        self._pending_state: dict[str, Any] | None = None

    def batches_per_epoch(self) -> int | None:
        try:
            return len(self.loader)
        except TypeError:  # an IterableDataset without __len__
            return None

    def _start_iterator(self) -> Iterator[Any]:
        dataset = self.loader.dataset
        if callable(getattr(dataset, "set_epoch", None)):
            dataset.set_epoch(self.epoch)
        if self._pending_state is not None:
            self.loader.load_state_dict(self._pending_state)
            self._pending_state = None
        return iter(self.loader)

    def state_dict(self) -> dict[str, Any]:
        # Before the first batch of an epoch the loader has no iterator: its state is "at the start".
        loader_state = self.loader.state_dict() if self._batches is not None else self._pending_state
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "stream": loader_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.batch_in_epoch, self._batches = state["epoch"], state["batch_in_epoch"], None
        self._pending_state = state.get("stream")


def make_train_data(loader: Any, stream: bool) -> TrainData:
    """The stateful position over a training loader."""
    return StreamTrainData(loader) if stream else TrainData(loader)
