"""Task benchmarks for vllm-pard2: ``python -m benchmarks.run`` (also ``vllm-pard2-bench``)."""
