"""The world layer: the data the models learn from. lm: the embedded synthetic world (language,
facts, skills, canaries); corpus: token streams from JSONL/text/`datasets`/.npy; images: vision
datasets with seeded noisy labels."""
