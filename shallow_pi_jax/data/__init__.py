"""Robot data: RLDS via tensorflow-datasets, openpi's transforms, norm stats and tokenizer.

    from shallow_pi_jax.data import make_dataset, make_input_transform, make_output_transform
"""
from shallow_pi_jax.data.config import DataConfig, DatasetSpec, default_config
from shallow_pi_jax.data.mappings import Mapping, resolve_mapping
from shallow_pi_jax.data.transforms import make_input_transform, make_output_transform


def make_dataset(data_config, train: bool = True):
    """See shallow_pi_jax.data.pipeline.make_dataset (imported lazily: it pulls in TensorFlow)."""
    from shallow_pi_jax.data.pipeline import make_dataset as _make

    return _make(data_config, train)


__all__ = ["DataConfig", "DatasetSpec", "Mapping", "default_config", "make_dataset", "make_input_transform",
           "make_output_transform", "resolve_mapping"]
