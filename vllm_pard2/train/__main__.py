"""``python -m vllm_pard2.train -c config.yaml [--set key=value ...]``: train a draft.

Data parallel: ``torchrun --nproc_per_node N -m vllm_pard2.train -c config.yaml`` (rank 0 prints)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import yaml

from vllm_pard2.train.config import TrainConfigError, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vllm_pard2.train", description=__doc__)
    parser.add_argument("-c", "--config", required=True, help="YAML training config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key (YAML value)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    try:
        cfg = load_config(args.config, overrides)
    except TrainConfigError as err:
        print(err, file=sys.stderr)
        return 2
    from vllm_pard2.train.trainer import Trainer

    summary = Trainer(cfg).train()
    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
