"""Prefect 3 flows composing the `pipeline` library, and the `stego` command line."""
