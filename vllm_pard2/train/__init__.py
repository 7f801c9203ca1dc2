"""Training PARD / PARD-2 drafters: ``python -m vllm_pard2.train -c config.yaml``.

Modules: ``config`` (YAML schema and validation), ``data`` (``datasets`` files,
chat template, streaming, length buckets), ``layout`` (block layout, COD, CAT
weights), ``attention`` (the mask as a dense bool mask or a FlexAttention
BlockMask), ``runtime`` (device, precision, torchrun/DDP), ``losses``,
``trainer`` (the loop), ``progress`` (bar, log, TensorBoard), ``export``
(plugin layout), ``generate`` (target responses through vLLM, resumable),
``bench_attention`` (the mask memory/time table), ``recipe_tiny`` (the
embedded tiny pair) and ``confidence`` (the target's mean top-1 probability on
its own greedy text, which the recipe records).
"""
