"""After the run: export the adapted model as a Hugging Face folder, and predict with it."""
