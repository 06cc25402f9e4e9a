"""Robot data: RLDS via tensorflow-datasets, openpi's transforms, norm stats and tokenizer.

    from shallow_pi_jax.data.pipeline import make_dataset     # TensorFlow input pipeline
    from shallow_pi_jax.data.transforms import make_input_transform, make_output_transform  # numpy only
"""
