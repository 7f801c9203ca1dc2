"""Task benchmarks for vllm-pard2: ``python -m benchmarks.run``, run from the repository root."""
