"""Training PARD / PARD-2 drafters: ``python -m vllm_pard2.train -c config.yaml``.

Modules: ``config`` (YAML schema and validation), ``data`` (JSONL examples),
``layout`` (block layout, COD, attention mask, CAT weights), ``losses``,
``trainer`` (the loop), ``export`` (plugin layout), ``generate`` (target
responses through vLLM) and ``recipe_tiny`` (the embedded tiny pair).
"""
