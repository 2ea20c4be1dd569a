"""philip-tiny: the embedded default model, its data, training and measurement."""
