"""The data stage: corpus text, the sentence encoder and its cache, splits, windows, the prepared data/ folder."""
