"""Exceptions of the training subpackage: every message names the file / episode / field and the rule broken."""
from __future__ import annotations

from model_core.errors import ConfigError, ModelCoreError


class DatasetError(ModelCoreError, ValueError):
    """A dataset that cannot train this model/embodiment: missing feature, bad lengths, NaN values, wrong sizes.

    Raised before training starts, naming the dataset, the episode (when one is at fault) and the field.
    """

    def __init__(self, message: str, episode: int | None = None, field: str | None = None,
                 dataset: str | None = None):
        where = [] if dataset is None else [f"dataset {dataset}"]
        if episode is not None:
            where.append(f"episode {episode}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.message, self.episode, self.field, self.dataset = message, episode, field, dataset

    def in_dataset(self, dataset: str) -> DatasetError:
        """The same error, naming the dataset (once)."""
        if self.dataset is not None or dataset in self.message:
            return self
        return DatasetError(self.message, self.episode, self.field, dataset)


class TrainConfigError(ConfigError):
    """An invalid training config value (names the field, the value and the rule)."""
