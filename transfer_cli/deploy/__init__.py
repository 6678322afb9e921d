"""After the run: export the adapted model (Hugging Face or ONNX folder, compressed), predict files with it, serve it
over HTTP, and watch the served traffic for drift."""
