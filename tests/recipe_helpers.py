"""Tiny recipe inputs for tests: a random Llama target with a ChatML word tokenizer, and chat JSONL."""

from __future__ import annotations

import os

from eagle_ext.testing import chat_conversations, save_tiny_target, write_jsonl


def make_chats(path: str, n: int, *, seed: int = 0) -> str:
    write_jsonl(path, chat_conversations(n, seed=seed))
    return path


def tiny_overrides(tmp: str, *, algorithm: str = "eagle3", n_train: int = 16, n_eval: int = 4) -> list[str]:
    """Dotted overrides for eagle_ext/configs/tiny_cpu_<algorithm>.yaml pointing at fresh tiny inputs in ``tmp``."""
    target = os.path.join(tmp, "target")
    if not os.path.isdir(target):
        save_tiny_target(target)
    train = make_chats(os.path.join(tmp, "train.jsonl"), n_train)
    evaluation = make_chats(os.path.join(tmp, "eval.jsonl"), n_eval, seed=1)
    return [f"target.name_or_path={target}", f"data.train_path={train}", f"data.eval_path={evaluation}",
            f"output_dir={os.path.join(tmp, 'run')}", f"data.cache_dir={os.path.join(tmp, 'cache')}"]
